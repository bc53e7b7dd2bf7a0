"""Training loop: exact resume after a crash, sharded == single device, config guard, NaN stop."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from crash_run import CRASH_EXIT_STATUS

from configs import tiny
from consensus_jax import evaluation, experiment, methods
from consensus_jax import workdir as wd

ROOT = Path(__file__).resolve().parents[1]


def _config(**overrides):
    config = tiny.get_config()
    config.train.tensorboard = False
    config.train.progress = False
    for key, value in overrides.items():
        group, name = key.split("__")
        config[group][name] = value
    return config


def _train_cli(workdir, *extra, env=None):
    cmd = [sys.executable, str(ROOT / "train.py"), "--config=" + str(ROOT / "configs/tiny.py"),
           f"--workdir={workdir}", "--config.train.tensorboard=False",
           "--config.train.progress=False", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _crash(workdir, step, *overrides):
    """A tiny run killed right after ``step`` (tests/crash_run.py injects the hook)."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_run.py"), str(workdir),
                             str(step), *overrides], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == CRASH_EXIT_STATUS, result.stderr[-2000:]


def _params(workdir, step="latest"):
    _, params, step, _ = evaluation.load_run(workdir, step)
    return params, step


def _assert_same_params(a, b, atol):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    experiment.fit(_config(), workdir)
    return workdir


def test_resume_after_crash_matches_uninterrupted(reference_run, tmp_path):
    _crash(tmp_path, 7)
    # Checkpoints every 3 steps and saves are asynchronous: the crash right after step 7 leaves
    # step 6, or step 3 when the save of step 6 was still in flight.
    params6, step = _params(tmp_path)
    assert step in (3, 6)
    experiment.fit(_config(), tmp_path)
    params, step = _params(tmp_path)
    ref, ref_step = _params(reference_run)
    assert step == ref_step == 12
    _assert_same_params(params, ref, atol=1e-6)
    assert not np.allclose(jax.tree_util.tree_leaves(params6)[0],
                           jax.tree_util.tree_leaves(params)[0])
    # The checkpoint of the best validation loss survives the crash and the resume: the same
    # step and parameters as the uninterrupted run's.
    best, best_step = _params(tmp_path, "best")
    ref_best, ref_best_step = _params(reference_run, "best")
    assert best_step == ref_best_step
    _assert_same_params(best, ref_best, atol=1e-6)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(reference_run, tmp_path):
    _crash(tmp_path, 10)
    ckpt = tmp_path / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert len(steps) == 2  # keep_checkpoints=2: 6 and 9 (or 3 and 6 if a save was in flight)
    newest = ckpt / str(steps[-1]) / "params"
    for f in [f for f in newest.rglob("*") if f.is_file() and f.stat().st_size > 0]:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match=f"resumes from step {steps[0]}"):
        experiment.fit(_config(), tmp_path)
    assert (ckpt / f"{steps[-1]}.unreadable").is_dir()  # kept for inspection
    params, step = _params(tmp_path)
    ref, _ = _params(reference_run)
    assert step == 12
    _assert_same_params(params, ref, atol=1e-6)


@pytest.fixture(scope="module")
def multi_step_run(tmp_path_factory):
    """The reference run with 5 training steps per dispatch (the fused multi-step function)."""
    workdir = tmp_path_factory.mktemp("multi_step")
    experiment.fit(_config(train__steps_per_dispatch=5), workdir)
    return workdir


def test_steps_per_dispatch_changes_nothing_but_rounding(reference_run, multi_step_run,
                                                         tmp_path):
    # The same steps, batches and events whatever the number of steps per dispatch: bitwise
    # between two multi-step settings, float32 rounding against one dispatch per step.
    experiment.fit(_config(train__steps_per_dispatch=2), tmp_path)
    five, five_step = _params(multi_step_run)
    two, two_step = _params(tmp_path)
    assert five_step == two_step == 12
    _assert_same_params(two, five, atol=0)
    ref, _ = _params(reference_run)
    _assert_same_params(five, ref, atol=1e-3)

    def logged(workdir):
        return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert logged(multi_step_run) == logged(reference_run)
    with pytest.raises(ValueError, match="steps_per_dispatch must be >= 0"):
        experiment.fit(_config(train__steps_per_dispatch=-1), tmp_path / "bad")


def test_multi_step_resume_after_crash_matches_uninterrupted(multi_step_run, tmp_path):
    _crash(tmp_path, 7, "train.steps_per_dispatch=5")
    experiment.fit(_config(train__steps_per_dispatch=5), tmp_path)
    params, step = _params(tmp_path)
    ref, _ = _params(multi_step_run)
    assert step == 12
    _assert_same_params(params, ref, atol=0)


@pytest.mark.parametrize("per_dispatch", [1, 5])
def test_four_device_sharded_training_equals_single_device(reference_run, multi_step_run,
                                                           tmp_path, per_dispatch):
    result = _train_cli(tmp_path, f"--config.train.steps_per_dispatch={per_dispatch}",
                        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert result.returncode == 0, result.stderr[-2000:]
    params, _ = _params(tmp_path)
    ref, _ = _params(reference_run if per_dispatch == 1 else multi_step_run)
    # Adam normalises tiny all-reduce rounding differences: 12 steps leave ~1e-5 absolute.
    _assert_same_params(params, ref, atol=1e-4)


def test_finished_run_is_not_retrained(reference_run, capsys):
    before = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    experiment.fit(_config(), reference_run)
    assert "already trained to step 12" in capsys.readouterr().out
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir()) == before


def test_workdir_with_other_config_is_refused(reference_run):
    with pytest.raises(ValueError, match=r"loss.beta_r: stored 0.5, now 0.0"):
        experiment.fit(_config(loss__beta_r=0.0), reference_run)
    # Runtime-only keys may change freely.
    experiment.fit(_config(train__log_every_steps=5), reference_run)


def test_a_change_that_fails_or_trains_nothing_leaves_the_stored_config(reference_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    stored = (run / "config.json").read_bytes()
    # Other shapes than the checkpoint's: the restore fails, and the run keeps its config.
    with pytest.raises(ValueError):
        experiment.fit(_config(model__base_features=16), run, allow_config_change=True)
    assert (run / "config.json").read_bytes() == stored
    # A finished run is not relabelled with settings it was never trained with.
    experiment.fit(_config(loss__beta_r=0.0), run, allow_config_change=True)
    assert (run / "config.json").read_bytes() == stored
    assert not (run / wd.CONFIG_HISTORY).exists()
    # Training further stores the new config, and the change with the step it applies from.
    experiment.fit(_config(train__num_steps=13), run, allow_config_change=True)
    assert json.loads((run / "config.json").read_text())["train.num_steps"] == 13
    (change,) = [json.loads(line) for line in (run / wd.CONFIG_HISTORY).open()]
    assert change["step"] == 12 and change["changed"] == {"train.num_steps": [12, 13]}


@pytest.mark.parametrize("key, value, match", [
    ("optim__learning_rate", -0.003, "optim.learning_rate=-0.003: must be a positive"),
    ("optim__learning_rate", 0.0, "optim.learning_rate=0.0: must be a positive"),
    ("train__batch_size", 0, r"train.batch_size=0: must be an integer >= 1"),
    ("train__patch_size_px", 512, "larger than the training images"),
    ("train__keep_checkpoints", 0, "train.keep_checkpoints=0"),
])
def test_nonsense_settings_are_refused_before_anything_is_written(key, value, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        experiment.fit(_config(**{key: value}), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_run_that_fails_to_start_does_not_lock_its_workdir(tmp_path):
    with pytest.raises(ValueError, match="num_steps"):
        experiment.fit(_config(train__num_steps=-5, train__num_epochs=0), tmp_path)
    assert not (tmp_path / "config.json").exists()
    experiment.fit(_config(train__num_steps=2), tmp_path)  # the corrected command runs


def test_nan_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    experiment.fit(_config(train__num_steps=6), tmp_path)
    config = _config(optim__learning_rate=1e12, train__num_steps=40)
    with pytest.raises(FloatingPointError, match="is (nan|inf) at step") as err:
        experiment.fit(config, tmp_path, allow_config_change=True)
    params, step = _params(tmp_path)
    assert 6 <= step < 40
    assert f"the checkpoint of step {step} is kept" in str(err.value)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))


def test_cosine_schedule_run_trains_and_restores(reference_run, tmp_path):
    experiment.fit(_config(optim__schedule="cosine"), tmp_path)
    params, step = _params(tmp_path)
    ref, _ = _params(reference_run)
    assert step == 12
    # Same seed and batches, smaller steps after the first: the parameters differ.
    assert not np.allclose(jax.tree_util.tree_leaves(params)[0], jax.tree_util.tree_leaves(ref)[0])
    method, restored, _, _ = evaluation.load_run(tmp_path, "latest")
    _assert_same_params(restored, params, atol=0)


def test_config_stored_before_a_key_existed_matches_its_default(reference_run):
    import json

    path = reference_run / "config.json"
    stored = json.loads(path.read_text())
    old = {k: v for k, v in stored.items() if k != "optim.schedule"}
    path.write_text(json.dumps(old))
    try:
        assert wd.load_config(reference_run).optim.schedule == "constant"
        experiment.fit(_config(), reference_run)  # "constant" == the old runs' behaviour
        with pytest.raises(ValueError, match=r"optim.schedule: stored 'constant', now 'cosine'"):
            experiment.fit(_config(optim__schedule="cosine"), reference_run)
    finally:
        path.write_text(json.dumps(stored))


def test_config_stored_before_num_splits_existed_resumes_as_the_pair(reference_run):
    import json

    path = reference_run / "config.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in stored.items() if k != "data.num_splits"}))
    try:
        assert wd.load_config(reference_run).data.num_splits == 2
        experiment.fit(_config(), reference_run)  # finished: nothing to do, no refusal
        with pytest.raises(ValueError, match=r"data.num_splits: stored 2, now 3"):
            experiment.fit(_config(data__num_splits=3), reference_run)
    finally:
        path.write_text(json.dumps(stored))


def test_checkpoint_saved_in_the_old_single_item_layout_still_restores_and_resumes(
        reference_run, tmp_path):
    """Runs saved before params and opt_state were separate orbax items hold one item, the whole
    TrainState: evaluation still reads it, and training resumes from it to the same result."""
    import orbax.checkpoint as ocp

    from consensus_jax import train_lib

    first_half = tmp_path / "first_half"
    experiment.fit(_config(train__num_steps=6), first_half)
    method = methods.from_config(_config())
    template = train_lib.create_train_state(method, train_lib.make_optimizer(1.0),
                                            jax.random.PRNGKey(0))
    state6 = wd.restore_state(first_half / wd.CHECKPOINTS, 6, template)
    legacy = tmp_path / "legacy"
    wd.check_workdir_config(legacy, _config(), allow_config_change=False)
    mngr = ocp.CheckpointManager((legacy / wd.CHECKPOINTS).absolute(),
                                 options=ocp.CheckpointManagerOptions(create=True))
    mngr.save(6, args=ocp.args.StandardSave(state6))
    mngr.wait_until_finished()
    mngr.close()
    assert (legacy / wd.CHECKPOINTS / "6" / "default").is_dir()

    params, step = _params(legacy)
    assert step == 6
    _assert_same_params(params, state6.params, atol=0)
    experiment.fit(_config(), legacy)
    assert (legacy / wd.CHECKPOINTS / "12" / "params").is_dir()
    params12, step = _params(legacy)
    ref, _ = _params(reference_run)
    assert step == 12
    _assert_same_params(params12, ref, atol=1e-6)


def test_new_checkpoints_restore_the_parameters_alone(reference_run):
    step_dir = reference_run / wd.CHECKPOINTS / "12"
    assert (step_dir / "params").is_dir() and (step_dir / "opt_state").is_dir()
