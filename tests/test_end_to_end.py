"""prep -> train -> evaluate on the tiny CT config, through the real command-line programs."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


def _run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def runs(tiny_ct_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = [f"--config.data.data_dir={tiny_ct_data_dir}", "--config.data.name=ct_consensus",
            "--config.data.config=tiny", "--config.train.num_steps=4",
            "--config.train.tensorboard=True"]
    kinds = {"consensus": [], "noise2noise": ["--config.loss.beta_r=0"],
             "noise2clean": ["--config.loss.beta_r=0"]}
    for kind, extra in kinds.items():
        _run("train.py", "--config=configs/tiny.py", f"--workdir={root / kind}",
             f"--config.loss.kind={kind}", *data, *extra)
    return root, list(kinds)


def test_evaluate_writes_table_csv_json_and_figure(runs, tmp_path):
    root, kinds = runs
    out = tmp_path / "results"
    stdout = _run("evaluate.py", "--runs=" + ",".join(str(root / k) for k in kinds),
                  f"--out={out}")
    table = (out / "table.md").read_text()
    header = [line for line in table.splitlines() if line.startswith("| Index")][0]
    assert header == ("| Index | FBP | TV | Noise2noise | Noise2noise (both halves) | Proposed | "
                      "Noise2clean |")
    assert "RMSE (HU) vs full-dose FBP" in table and "SSIM vs noiseless FBP" in table
    assert "±" in table and "RMSE (HU) vs full-dose FBP" in stdout
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["summary"]} >= {"FBP", "TV", "Proposed"}
    assert (out / "figure.png").stat().st_size > 10_000
    assert (out / "table.csv").read_text().startswith("method,reference,metric,mean,std")
    # The pair's spread against its error, under the table: a rank correlation per reference.
    spread = [line for line in table.splitlines() if line.startswith("| Proposed | ")]
    assert len(spread) == 3 and "Spearman's rank correlation" in stdout
    for record in results["uncertainty"]:
        assert record["method"] == "Proposed" and -1 <= record["pooled"] <= 1
    for kind in kinds:
        assert any((root / kind / "tensorboard").iterdir())
        assert (root / kind / "config.json").exists()
        summary = json.loads((root / kind / "eval_summary.json").read_text())
        # The best checkpoint by the validation loss (evaluated at steps 3 and 4).
        assert summary["step"] in (3, 4) and len(summary) >= 3
        assert (root / kind / "best").is_dir()
    assert "best validation loss" in table.splitlines()[0]


def test_dataset_without_the_validation_split_trains_with_a_note(tiny_ct_data_dir, tmp_path):
    stdout = _run("train.py", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}",
                  f"--config.data.data_dir={tiny_ct_data_dir}", "--config.data.name=ct_consensus",
                  "--config.data.config=tiny", "--config.train.num_steps=2",
                  "--config.train.tensorboard=False", "--config.data.validation_split=held_out")
    assert "has no 'held_out' split" in stdout
    assert not (tmp_path / "run" / "best").exists()
