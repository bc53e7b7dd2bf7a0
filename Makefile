# The two commands users need are `make demo` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= results
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test lint demo bench clean-results

# Idempotent: (re)installs only when the venv is missing or setup.cfg/pyproject.toml changed.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest -m "not slow" -q

demo: venv
	$(BIN)/python -m consensus_jax.demo --workdir=$(OUT)/demo

bench: venv
	$(BIN)/python -m bench.run_all --out=bench/RESULTS.md
