"""Fault injection: a training run killed (SIGKILL) at random moments and resumed ends with the
uninterrupted run's parameters, bitwise; data preparation killed and rerun writes the same
dataset. Both run the real commands in child processes (slow: `make test-all`)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from consensus_jax import evaluation, input_pipeline

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261130  # the kill moments are random, but reproducible


def _train_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
            "--config.train.tensorboard=False", "--config.train.progress=False",
            "--config.train.num_steps=1500", "--config.train.log_every_steps=25",
            "--config.train.checkpoint_every_steps=25", "--config.train.eval_every_steps=50",
            "--config.train.early_stop_patience=0"]


def _run_to_end(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return time.perf_counter() - t0


def _kill_after(cmd: list[str], seconds: float) -> bool:
    """Starts ``cmd``, SIGKILLs it after ``seconds``; whether it was still running."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


@pytest.mark.slow
def test_training_killed_at_five_random_moments_resumes_bitwise(tmp_path):
    wall = _run_to_end(_train_cmd(tmp_path / "reference"))
    rng = np.random.default_rng(SEED)
    killed = tmp_path / "killed"
    kills = attempts = 0
    while kills < 5 and attempts < 20:
        attempts += 1
        # A moment anywhere from start-up (compiling, restoring) to training and saving; at
        # most 40% of a whole run, so that five kills come before the run can finish.
        kills += _kill_after(_train_cmd(killed), float(rng.uniform(0.5, 0.4 * wall)))
    assert kills == 5, f"only {kills} of {attempts} starts were still running when killed"
    _run_to_end(_train_cmd(killed))
    _, ref, ref_step, _ = evaluation.load_run(tmp_path / "reference", "latest")
    _, got, step, _ = evaluation.load_run(killed, "latest")
    assert step == ref_step == 1500
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not list(killed.rglob("*.orbax-checkpoint-tmp*"))


def _files(data_dir: Path) -> dict[str, str]:
    """SHA-1 of every file of the finished dataset version(s) under ``data_dir`` (the ones with
    a dataset_info.json; an interrupted build's leftovers are not part of the dataset), by name,
    except TFDS's own: dataset_info.json, and the TFRecord shards, whose bytes differ between
    two clean builds (their decoded contents are compared instead). .npz files are compared by
    their arrays."""
    out = {}
    for info in sorted(data_dir.rglob("dataset_info.json")):
        for p in sorted(info.parent.iterdir()):
            if p.name == "dataset_info.json" or ".tfrecord" in p.name or not p.is_file():
                continue
            if p.suffix == ".npz":
                with np.load(p) as f:
                    digest = hashlib.sha1(b"".join(f[k].tobytes() for k in sorted(f.files)))
            else:
                digest = hashlib.sha1(p.read_bytes())
            out[str(p.relative_to(data_dir))] = digest.hexdigest()
    return out


def _splits(data_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    cfg = ml_collections.ConfigDict({"name": "ct_consensus", "config": "tiny",
                                     "data_dir": str(data_dir), "max_train_slices": 0})
    return {s: input_pipeline.load_split(cfg, s, "ct") for s in ("train", "validation", "test")}


@pytest.mark.slow
def test_data_prep_killed_and_rerun_builds_the_same_dataset(tmp_path):
    def cmd(data_dir: Path) -> list[str]:
        return [sys.executable, "-m", "data_prep.ct", "--config=tiny", f"--data_dir={data_dir}",
                "--tv_iterations=30"]

    wall = _run_to_end(cmd(tmp_path / "reference"))
    rng = np.random.default_rng(SEED)
    for _ in range(2):  # killed twice, at moments from start-up to writing the shards
        _kill_after(cmd(tmp_path / "killed"), float(rng.uniform(0.3, 0.9) * wall))
    _run_to_end(cmd(tmp_path / "killed"))
    reference = _files(tmp_path / "reference")
    assert any(name.endswith("baselines_test.npz") for name in reference)
    assert _files(tmp_path / "killed") == reference
    killed, ref = _splits(tmp_path / "killed"), _splits(tmp_path / "reference")
    for split, features in ref.items():
        assert sorted(killed[split]) == sorted(features)
        for name, values in features.items():
            np.testing.assert_array_equal(killed[split][name], values, err_msg=f"{split}/{name}")
