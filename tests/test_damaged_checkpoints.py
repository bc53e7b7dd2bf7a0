"""Checkpoints that do not restore: damage is told from a config that changed the model's
shapes, the damaged file or step folder is named, and evaluation scores what does restore."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from configs import tiny
from consensus_jax import evaluation, experiment
from consensus_jax import workdir as wd
from consensus_jax.errors import RunError


def _config():
    config = tiny.get_config()
    config.train.tensorboard = config.train.progress = False
    config.train.num_steps = 6  # checkpoints at steps 3 and 6, both kept
    config.loss.kind, config.loss.beta_r = "noise2noise", 0.0
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("damaged") / "run"
    experiment.fit(_config(), workdir)
    assert sorted(int(p.name) for p in (workdir / wd.CHECKPOINTS).iterdir()) == [3, 6]
    return workdir


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _truncate(folder: Path) -> None:
    """Every file under ``folder`` cut in half, as a full disk or a killed copy leaves it."""
    for f in folder.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_damaged_checkpoints_are_named_not_blamed_on_the_config(run, tmp_path):
    workdir = _copy(run, tmp_path)
    _truncate(workdir / wd.CHECKPOINTS)
    with pytest.raises(RunError) as err:
        experiment.fit(_config(), workdir)
    message = str(err.value)
    assert "they are damaged" in message
    for step in (3, 6):
        assert f"step {step}: {workdir / wd.CHECKPOINTS / str(step)}" in message
    assert f"delete {workdir / wd.CHECKPOINTS / '6'}" in message
    assert "new --workdir" not in message and "shapes" in message
    assert sorted(p.name for p in (workdir / wd.CHECKPOINTS).iterdir()) == ["3", "6"]  # kept


def test_a_config_that_changes_the_shapes_is_named_parameter_by_parameter(run, tmp_path):
    workdir = _copy(run, tmp_path)
    config = _config()
    config.model.base_features = 4
    config.train.num_steps = 9
    with pytest.raises(RunError) as err:
        experiment.fit(config, workdir, allow_config_change=True)
    message = str(err.value)
    assert "other shapes than this config makes" in message
    assert "net1/bottom/conv0/kernel: stored (3, 3, 16, 32), this run (3, 3, 8, 16)" in message
    assert "new --workdir" in message and "damaged" not in message


def test_the_damaged_file_is_found_in_the_error_text(tmp_path):
    step_dir = tmp_path / "checkpoints" / "3"
    err = ValueError(f"cannot read file://{step_dir}/params/d/abc, a truncated file")
    assert wd.damaged_file(err, step_dir) == step_dir / "params" / "d" / "abc"
    assert wd.damaged_file(ValueError("Unterminated string"), step_dir) == step_dir
    outside = ValueError("while reading /somewhere/else")
    assert wd.damaged_file(outside, step_dir) == step_dir


def test_evaluation_of_a_damaged_run_says_so(run, tmp_path):
    workdir = _copy(run, tmp_path)
    for folder in (wd.CHECKPOINTS, wd.BEST):
        _truncate(workdir / folder)
    with pytest.raises(RunError, match="no checkpoint restores; the checkpoints are damaged"):
        evaluation.evaluate([workdir], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_trajectory_scores_what_restores_and_lists_the_rest(run, tmp_path):
    workdir = _copy(run, tmp_path)
    _truncate(workdir / wd.CHECKPOINTS / "3")
    with pytest.warns(UserWarning, match=r"Left out of the trajectory.*checkpoint 3: "):
        path = evaluation.trajectory([workdir], tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    scored = dict.fromkeys((r["checkpoint"], r["step"]) for r in rows if "error" not in r)
    assert list(scored) == [("6", 6), ("best", 6)]
    failed = [r for r in rows if "error" in r]
    assert [(r["checkpoint"], r["step"]) for r in failed] == [("3", 3)]
    assert "damaged" in failed[0]["error"] and str(workdir / wd.CHECKPOINTS / "3") in \
        failed[0]["error"]
    table = path.read_text()
    assert "Not scored, as they do not restore:" in table and "checkpoint 3:" in table


def test_trajectory_with_nothing_restorable_writes_nothing(run, tmp_path):
    workdir = _copy(run, tmp_path)
    for folder in (wd.CHECKPOINTS, wd.BEST):
        _truncate(workdir / folder)
    with pytest.raises(RunError, match="restores, so nothing is scored"):
        evaluation.trajectory([workdir], tmp_path / "out")
    assert not (tmp_path / "out").exists()
