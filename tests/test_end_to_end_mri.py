"""prep -> train -> evaluate on the tiny MRI config, through the real command-line programs."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


def _check(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def runs(tiny_mri_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mri_runs")
    data = [f"--config.data.data_dir={tiny_mri_data_dir}", "--config.train.num_steps=3",
            "--config.train.tensorboard=False", "--config.train.progress=False"]
    kinds = {"consensus": [], "noise2noise": ["--config.loss.beta_r=0"],
             "noise2clean": ["--config.loss.beta_r=0"]}
    # The three trainings are independent: run them side by side.
    procs = [subprocess.Popen([sys.executable, "train.py", "--config=configs/mri_tiny.py",
                               f"--workdir={root / kind}", f"--config.loss.kind={kind}",
                               *data, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for kind, extra in kinds.items()]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        _check(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return root, list(kinds)


def test_evaluate_writes_the_mri_table_and_figure(runs, tmp_path):
    root, kinds = runs
    out = tmp_path / "results"
    stdout = _check(subprocess.run(
        [sys.executable, "evaluate.py", "--runs=" + ",".join(str(root / k) for k in kinds),
         f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600))
    table = (out / "table.md").read_text()
    header = [line for line in table.splitlines() if line.startswith("| Index")][0]
    assert header == ("| Index | Zero-filling | SENSE | Noise2noise | Noise2noise (both halves) "
                      "| Proposed | Noise2clean |")
    assert "RMSE (10^-3) vs fully sampled" in table and "SSIM vs noiseless" in table
    assert "mri_consensus/tiny: 3 slices" in stdout
    assert "Note:" not in stdout  # no raw-data baselines (CT's TV) are expected for MRI
    results = json.loads((out / "results.json").read_text())
    summary = {(r["method"], r["reference"], r["metric"]): r for r in results["summary"]}
    # The baselines are the stored images: SENSE beats zero-filling on the knees.
    assert (summary[("SENSE", "fully sampled", "rmse_1e3")]["mean"]
            < summary[("Zero-filling", "fully sampled", "rmse_1e3")]["mean"])
    assert all(r["num_slices"] == 3 for r in results["summary"])
    assert (out / "figure.png").stat().st_size > 10_000
    for kind in kinds:
        assert (root / kind / "config.json").exists()
        stored = json.loads((root / kind / "config.json").read_text())
        assert stored["modality"] == "mri" and stored["loss.noise2clean_input"] == "x_zf"
        summary = json.loads((root / kind / "eval_summary.json").read_text())
        assert summary["step"] == 3
    assert "Proposed rmse_1e3" in json.loads((root / "consensus" / "eval_summary.json").read_text())


def test_every_scheme_validates_on_the_heldout_kspace_lines(runs, tiny_mri_data_dir):
    """val/loss is the k-space error of the scheme's own prediction on the held-out lines (a
    NumPy transcription of the forward model here); the image loss is kept as a diagnostic."""
    import jax
    import ml_collections
    import numpy as np

    from consensus_jax import evaluation, input_pipeline
    from consensus_jax import export as cj_export

    root, kinds = runs
    data = ml_collections.ConfigDict({"name": "mri_consensus", "config": "tiny",
                                      "data_dir": str(tiny_mri_data_dir),
                                      "train_split": "train"})
    val = input_pipeline.load_split(data, "validation", "mri")
    maps = val["maps"][..., 0] + 1j * val["maps"][..., 1]
    measured = val["heldout_kspace"][..., 0] + 1j * val["heldout_kspace"][..., 1]
    valid = val["heldout_valid"][:, :, None, :]
    for kind in kinds:
        rows = [json.loads(line) for line in (root / kind / "metrics.jsonl").read_text()
                .splitlines()]
        (row,) = [r for r in rows if "val/loss" in r]
        assert row["step"] == 3 and "val/consensus_loss_diagnostic" in row
        method, params, step, _ = evaluation.load_run(root / kind, "latest")
        images = {k: val[k] for k in ("x1", "x2", "x_est", "x_zf", "x_ref", "x_clean")}
        _, z = jax.jit(method.validation_terms)(params, images)
        z = np.asarray(z)
        coil = maps * (z[..., 0] + 1j * z[..., 1])[:, None]
        k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coil, axes=(-2, -1)), norm="ortho"),
                            axes=(-2, -1))
        k = np.take_along_axis(k, val["heldout_lines"][:, None, None, :], axis=-1)
        per_slice = (np.sum(np.abs(k - measured) ** 2 * valid, axis=(1, 2, 3))
                     / (z.shape[1] * valid.sum(axis=(1, 2, 3))))
        np.testing.assert_allclose(row["val/loss"], per_slice.mean(), rtol=1e-4)
    _, _, manifest = cj_export.build(root / "consensus", "latest")
    assert manifest["trained_for"]["map_threshold"] == 0.05
    assert "Hann" in manifest["trained_for"]["coil_maps"]
