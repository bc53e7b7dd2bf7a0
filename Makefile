# The two commands users need are `make demo` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 2
# XLA CPU maps a fresh temporary buffer for every train step; with glibc's huge-page tunable
# malloc advises transparent huge pages for it (far fewer page faults: about 20% off a quick CPU
# step, bench/PERF_LOG.md). Set it yourself when you run the programs without make.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: venv test test-multihost test-min-versions test-all lint demo demo-mri bench ablation ablation-mri ablation-k transfer-mri print-env

# Idempotent: (re)installs only when the venv is missing or setup.cfg/pyproject.toml changed.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest -m "not slow and not multihost" -q --durations=10

# Two real training processes on this machine (docs/multihost.md); about 3 minutes on 2 cores.
test-multihost: venv
	$(BIN)/python -m pytest -m multihost -q --durations=10

# The lowest versions setup.cfg allows (constraints/minimum.txt) in a throwaway venv, .venv-min,
# and the tests of the core, the readers, data preparation, training and evaluation with them:
# 5 min in all on the 2-core machine (126 tests passed, 2026-11-30).
MIN_TESTS := tests/test_imports.py tests/test_losses.py tests/test_models.py tests/test_train_lib.py \
	tests/test_patches.py tests/test_ct_io.py tests/test_metrics.py tests/test_mri_fastmri.py \
	tests/test_data_prep_ct.py tests/test_evaluation.py tests/test_experiment.py
test-min-versions:
	rm -rf .venv-min
	$(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet -c constraints/minimum.txt -e '.[test]'
	.venv-min/bin/python -m pytest -q -m "not slow and not multihost" $(MIN_TESTS)

# Everything, the tests marked slow (over ~20 s each) too.
test-all: venv lint
	$(BIN)/python -m pytest -q

# The environment every target runs with.
print-env:
	@echo "GLIBC_TUNABLES=$$GLIBC_TUNABLES"

# Quick CT experiment: built-in virtual patients -> noise2clean, noise2noise, consensus -> table.
demo: venv
	$(BIN)/python demo.py --modality=ct

demo-mri: venv
	$(BIN)/python demo.py --modality=mri

# Loss-term ablation on the quick CT set, 3 training seeds per setting (13 min on 2 idle cores).
ablation: venv
	$(BIN)/python ablation.py --config=configs/ct_quick.py --grid=loss_terms --seeds=0,1,2 \
		--root=work_dirs/ablation_ct --out=results/ablation_ct

# The MRI quick methods (noise2clean, noise2noise, consensus) over 3 training seeds.
ablation-mri: venv
	$(BIN)/python ablation.py --config=configs/mri_quick.py --grid=methods --seeds=0,1,2 \
		--root=work_dirs/mri_methods --out=results/mri_methods

# Consensus on K = 2, 3, 4 view subsets and Noise2Inverse on K = 2, 4 beside Noise2clean and
# Noise2noise, quick budget, 3 training seeds; prepares the three K-way datasets first (a finished
# dataset is reused) and adds what a training step costs per setting.
ablation-k: venv
	for preset in quick quick_k3 quick_k4; do $(BIN)/python -m data_prep.ct --config=$$preset \
		--nobaselines || exit $$?; done
	$(BIN)/python ablation.py --config=configs/ct_quick.py --grid=k_way --seeds=0,1,2 \
		--root=work_dirs/ablation_k --out=results/ablation_k

# Does the MRI result carry to other anatomy? The mri_transfer grid (3 seeds) trained on the
# quick knees and on the MNI152 slices, each scored on its own test split and on the other's;
# reuses finished datasets and runs (make ablation-mri's among them).
TRANSFER := $(BIN)/python ablation.py --config=configs/mri_quick.py --grid=mri_transfer --seeds=0,1,2
transfer-mri: venv
	for preset in quick mni; do $(BIN)/python -m data_prep.mri --config=$$preset || exit $$?; done
	$(TRANSFER) --root=work_dirs/mri_methods --out=results/mri_transfer_knee
	$(TRANSFER) --root=work_dirs/mri_methods --out=results/mri_knee_on_mni --test_data=mni
	$(TRANSFER) --config.data.config=mni --root=work_dirs/mri_mni --out=results/mri_transfer_mni
	$(TRANSFER) --config.data.config=mni --root=work_dirs/mri_mni --out=results/mri_mni_on_knee \
		--test_data=quick

# Benchmarks need the bench extra (PyTorch CPU 2.13.0 and sigpy as references).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run_all --out=bench/RESULTS.md
