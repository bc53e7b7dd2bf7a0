"""Two real processes on this machine (gloo CPU collectives) training one run through train.py.

Run with ``make test-multihost`` (CI runs it too). The training set has 5 slices, which two
processes cannot share evenly; every process holds all of them and contributes its half of each
global batch (consensus_jax/experiment.py), so the runs must match one-process runs.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT

from consensus_jax import distributed, evaluation

multihost = pytest.mark.multihost  # several processes each; make test leaves them out

STEPS = 12
LEARNING_RATE = 3e-3  # configs/tiny.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data_dir, workdir, *extra):
    return [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.data.name=ct_consensus",
            "--config.data.config=tiny", "--config.data.max_train_slices=5",
            f"--config.train.num_steps={STEPS}", "--config.train.tensorboard=False",
            "--config.train.progress=False", *extra]


def _env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _start(data_dir, workdir, num_processes, *extra, port=None, ids=None):
    """Starts ``num_processes`` train.py processes of one run; returns the Popen objects."""
    port = port or _free_port()
    return [subprocess.Popen(
        _train_args(data_dir, workdir, f"--coordinator_address=127.0.0.1:{port}",
                    f"--num_processes={num_processes}", f"--process_id={i}", *extra),
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in (ids if ids is not None else range(num_processes))]


def _finish(procs, timeout=300):
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            pytest.fail(f"process still running after {timeout} s:\n{out[-3000:]}")
        outs.append((p.returncode, out))
    return outs


def _run_one(data_dir, workdir, devices):
    result = subprocess.run(_train_args(data_dir, workdir), cwd=ROOT, env=_env(devices),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _params(workdir) -> np.ndarray:
    _, params, step, _ = evaluation.load_run(workdir, "latest")
    assert step == STEPS
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])


@pytest.fixture(scope="module")
def two_process_run(tiny_ct_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multihost") / "run"
    return workdir, _finish(_start(tiny_ct_data_dir, workdir, 2))


@multihost
def test_two_processes_finish_at_the_same_step(two_process_run):
    workdir, outs = two_process_run
    for i, (code, out) in enumerate(outs):
        assert code == 0, out[-3000:]
        assert f"trained to step {STEPS} (process {i} of 2)" in out
    # Process 0 alone writes the logs and the test summary.
    assert "test split vs full-dose FBP" in outs[0][1]
    assert "test split vs" not in outs[1][1]
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text()
             .splitlines() if '"total"' in line]
    # Logged at every 2nd step, checkpoint (3rd) and validation (3rd), each once.
    assert steps == [2, 3, 4, 6, 8, 9, 10, 12]
    assert (workdir / "eval_summary.json").exists()


@multihost
def test_two_processes_match_one_process(two_process_run, tiny_ct_data_dir, tmp_path):
    workdir, _ = two_process_run
    _run_one(tiny_ct_data_dir, tmp_path / "two_devices", devices=2)
    _run_one(tiny_ct_data_dir, tmp_path / "one_device", devices=1)
    two_procs = _params(workdir)
    # One process over two devices partitions the step exactly as two processes with one device
    # each do: the same batches, the same per-device work, and a sum of two gradients.
    np.testing.assert_array_equal(two_procs, _params(tmp_path / "two_devices"))
    # One device sums the whole batch in another order: float32 rounding in the gradients.
    # Adam scales every update to about the learning rate, so an entry whose gradient is mostly
    # rounding can move by up to that much; a tenth of one step's update bounds what we see
    # (6.6e-5 after 12 steps when this test was written).
    diff = np.abs(two_procs - _params(tmp_path / "one_device")).max()
    assert diff < 0.1 * LEARNING_RATE


def _latest_step(workdir) -> int:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=0)


@multihost
def test_kill_one_process_then_resume_both(tiny_ct_data_dir, tmp_path):
    workdir = tmp_path / "run"
    extra = ["--config.train.num_steps=60", "--config.train.steps_per_dispatch=2"]  # fused loop
    procs = _start(tiny_ct_data_dir, workdir, 2, *extra)
    deadline = time.monotonic() + 240
    while _latest_step(workdir) < 6:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    # The survivor fails at its next collective, or when the runtime notices the lost peer
    # (heartbeats); a job scheduler would then restart the whole job, as done here.
    try:
        procs[0].wait(timeout=20)
    except subprocess.TimeoutExpired:
        procs[0].kill()
    for p in procs:
        p.communicate()
    killed_at = _latest_step(workdir)
    assert killed_at < 60
    outs = _finish(_start(tiny_ct_data_dir, workdir, 2, *extra))
    resumed = []
    for i, (code, out) in enumerate(outs):
        assert code == 0, out[-3000:]
        match = re.search(rf"resuming from step (\d+) \(process {i} of 2\)", out)
        assert match, out[-3000:]
        resumed.append(int(match.group(1)))
        assert f"trained to step 60 (process {i} of 2)" in out
    assert resumed[0] == resumed[1] >= 6


@multihost
def test_wrong_number_of_processes_fails_clearly_and_in_bounded_time(tiny_ct_data_dir,
                                                                       tmp_path):
    port = _free_port()
    # Process 0 expects 2 processes; the other one was told there are 3.
    first = _start(tiny_ct_data_dir, tmp_path / "run", 2, "--init_timeout_s=10", port=port,
                   ids=[0])
    second = _start(tiny_ct_data_dir, tmp_path / "run", 3, "--init_timeout_s=10", port=port,
                    ids=[2])
    start = time.monotonic()
    outs = _finish(first + second, timeout=120)
    assert time.monotonic() - start < 120
    for code, out in outs:
        assert code != 0
        assert "Joining a multi-process run as process" in out
        assert "same --coordinator_address and --num_processes" in out
    assert "Unexpected task" in outs[1][1]  # JAX's own reason, after ours


def test_inconsistent_coordinates_are_refused_before_joining():
    with pytest.raises(ValueError, match="--num_processes, --process_id missing"):
        distributed.check_arguments("127.0.0.1:1234", None, None)
    with pytest.raises(ValueError, match="must lie in 0 .. 1"):
        distributed.check_arguments("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="must be host:port"):
        distributed.check_arguments("localhost", 2, 0)
    distributed.check_arguments("127.0.0.1:1234", 2, 1)
    distributed.check_arguments(None, None, None)


@multihost
def test_processes_started_with_different_counts_all_stop(tmp_path):
    """Process 0 is told there are 2 processes, process 1 that there are 3: both join (the
    coordinator's count wins), then both stop with one message naming both counts."""
    port = _free_port()
    first = _start(tmp_path / "data", tmp_path / "run", 2, "--init_timeout_s=30", port=port,
                   ids=[0])
    second = _start(tmp_path / "data", tmp_path / "run", 3, "--init_timeout_s=30", port=port,
                    ids=[1])
    start = time.monotonic()
    outs = _finish(first + second, timeout=120)
    assert time.monotonic() - start < 120
    for code, out in outs:
        assert code == 2, out[-3000:]
        assert "different --num_processes (process 0: 2, process 1: 3)" in out, out[-3000:]
        assert "Traceback" not in out
    assert not (tmp_path / "run").exists()  # refused before the workdir is touched


def test_a_joined_run_other_than_asked_is_refused():
    distributed.check_joined(2, 1, 2, 1, [(2, 0), (2, 1)])
    with pytest.raises(ValueError, match=r"different --num_processes \(process 0: 2, "
                                         r"process 1: 3\); the run has 2 processes"):
        distributed.check_joined(3, 1, 2, 1, [(2, 0), (3, 1)])
    with pytest.raises(ValueError, match=r"different --num_processes"):  # process 0 learns it
        distributed.check_joined(2, 0, 2, 0, [(2, 0), (3, 1)])
    with pytest.raises(ValueError, match=r"--num_processes=3, but the run joined through the "
                                         r"coordinator has 2 processes"):
        distributed.check_joined(3, 1, 2, 1)
    with pytest.raises(ValueError, match=r"--process_id=1, but JAX made this process number 0"):
        distributed.check_joined(2, 1, 2, 0)
