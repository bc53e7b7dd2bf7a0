"""What export and denoise may write and replace (consensus_jax.outputs): ``--overwrite``
replaces only an unchanged earlier output of the same command, never anything the command did
not write; outputs that cannot be written are refused before the work."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import dicom_series

from configs import tiny
from consensus_jax import errors, experiment, outputs
from consensus_jax import export as cj_export
from consensus_jax.denoise import main as denoise_main
from consensus_jax.errors import OutputExistsError, OutputUnwritableError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny noise2noise run, its export, and the export's parts (built once)."""
    root = tmp_path_factory.mktemp("trained")
    config = tiny.get_config()
    config.train.tensorboard = config.train.progress = False
    config.train.num_steps = 3
    config.loss.kind, config.loss.beta_r = "noise2noise", 0.0
    experiment.fit(config, root / "run")
    parts = cj_export.build(root / "run")
    cj_export.write(*parts, root / "model")
    return {"run": root / "run", "model": root / "model", "parts": parts}


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _stack(path: Path) -> Path:
    ramp = np.linspace(-1000.0, 400.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    np.save(path, np.stack([ramp, ramp[::-1]]))
    return path


# --- the record and the rule, without a model ---------------------------------------------------

def _write(path: Path, command: str = "cmd", folder: bool = True) -> Path:
    with outputs.write_output(path, command, folder=folder) as tmp:
        if folder:
            (tmp / "a.txt").write_text("a")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "b.txt").write_text("b")
        else:
            tmp.write_text("file")
    return path


def test_an_unchanged_earlier_output_is_replaceable_and_nothing_else(tmp_path):
    out = _write(tmp_path / "out")
    assert outputs.why_not_replaceable(out, "cmd") is None
    record = json.loads(outputs.record_path(out).read_text())
    assert record["written_by"] == "cmd" and set(record["files"]) == {"a.txt", "sub/b.txt"}
    assert "not cmd" in outputs.why_not_replaceable(out, "other") + " not cmd"
    (out / "sub" / "b.txt").write_text("changed")
    assert "changed since" in outputs.why_not_replaceable(out, "cmd")
    (out / "sub" / "b.txt").write_text("b")
    (out / "user.txt").write_text("added by the user")
    assert "user.txt" in outputs.why_not_replaceable(out, "cmd")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    assert "no record" in outputs.why_not_replaceable(foreign, "cmd")
    link = tmp_path / "link"
    link.symlink_to(out)
    assert "symbolic link" in outputs.why_not_replaceable(link, "cmd")
    single = _write(tmp_path / "x.npy", folder=False)
    assert outputs.why_not_replaceable(single, "cmd") is None
    single.write_text("edited")
    assert "changed since" in outputs.why_not_replaceable(single, "cmd")


def test_replacing_keeps_only_the_new_output_and_a_failure_keeps_the_old(tmp_path):
    out = _write(tmp_path / "out")
    with pytest.raises(RuntimeError), outputs.write_output(out, "cmd", folder=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("the work failed")
    assert _tree(out) == {"a.txt": hashlib.sha1(b"a").hexdigest(),
                          "sub/b.txt": hashlib.sha1(b"b").hexdigest()}
    outputs.check_destination(out, "cmd", True, {})
    with outputs.write_output(out, "cmd", folder=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert list(_tree(out)) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out" + outputs.RECORD_SUFFIX, "out"]


@pytest.mark.parametrize("where", ["equal", "inside", "around"])
def test_an_output_may_not_clash_with_what_the_command_reads(tmp_path, where):
    source = tmp_path / "data" / "scan"
    source.mkdir(parents=True)
    out = {"equal": source, "inside": source / "out", "around": tmp_path / "data"}[where]
    with pytest.raises(OutputExistsError, match={"equal": "is the input", "inside": "lies inside",
                                                 "around": "contains the input"}[where]):
        outputs.check_destination(out, "cmd", True, {"input": source})


def test_a_path_under_a_file_is_refused_before_the_work(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputUnwritableError, match="is a file, not a folder"):
        outputs.check_destination(tmp_path / "a_file" / "out.npy", "cmd", False, {})


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode:
        pytest.skip("mounting a tmpfs needs root (it stands in for a read-only or full disk)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_and_full_file_systems_are_named(tmp_path):
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        with pytest.raises(OutputUnwritableError, match="cannot write in"):
            outputs.check_destination(ro / "out.npy", "cmd", False, {})
    with _tmpfs(tmp_path / "full", "size=64k") as full:
        with pytest.raises(OutputUnwritableError, match="needs about"):
            outputs.check_writable(full / "out", needed_bytes=1 << 20)
        with pytest.raises(OutputUnwritableError, match="No space left"), \
                outputs.write_output(full / "big.bin", "cmd") as tmp:
            tmp.write_bytes(b"0" * (1 << 20))
        assert list(full.iterdir()) == []  # nothing half-written left


# --- the commands --------------------------------------------------------------------------------

def test_export_overwrite_replaces_an_earlier_export_only(trained, tmp_path, capsys):
    args = ["export", f"--workdir={trained['run']}", f"--out={tmp_path / 'm'}"]
    assert cj_export.main(args) == 0
    first = _tree(tmp_path / "m")
    assert cj_export.main([*args, "--overwrite"]) == 0
    assert set(_tree(tmp_path / "m")) == set(first)
    # The export, now edited by someone: no longer ours to replace.
    (tmp_path / "m" / "notes.txt").write_text("my notes")
    assert cj_export.main([*args, "--overwrite"]) == 5
    assert "changed since" in capsys.readouterr().err
    assert (tmp_path / "m" / "notes.txt").read_text() == "my notes"


def test_full_disk_during_training_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    config = tiny.get_config()
    config.train.tensorboard = config.train.progress = False
    config.train.num_steps, config.train.checkpoint_every_steps = 4, 2
    real = shutil.disk_usage
    calls = []

    def filling_up(path):
        calls.append(path)
        usage = real(path)
        # Room for the config and the first checkpoint; then the disk is full.
        return usage._replace(free=usage.free if len(calls) < 2 else 1000)

    monkeypatch.setattr(outputs.shutil, "disk_usage", filling_up)
    with pytest.raises(OutputUnwritableError, match=r"step 4 .*needs about .*step 2, is kept"):
        experiment.fit(config, tmp_path / "run")
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps == [2]
    monkeypatch.setattr(outputs.shutil, "disk_usage", real)
    state, _ = experiment.fit(config, tmp_path / "run")  # resumes from step 2 once there is room
    assert int(state.step) == 4


# --- the property: --overwrite never removes what the command did not write --------------------

#: Where the output goes relative to the input (denoise) or the workdir (export).
PLACES = ["new sibling", "same path", "inside", "around", "unrelated folder", "unrelated file",
          "earlier output", "earlier output, edited"]


def _place(root: Path, protected: Path, place: str, command: str, suffix: str) -> Path:
    if place == "same path":
        return protected
    if place == "inside":  # under a file input too: still refused as lying inside it
        return protected / f"out{suffix}"
    if place == "around":
        return protected.parent
    out = root / f"out{suffix}"
    if place == "unrelated folder":
        out.mkdir()
        (out / "data.txt").write_text("the user's")
    elif place == "unrelated file":
        out.write_text("the user's")
    elif place.startswith("earlier output"):
        with outputs.write_output(out, command, folder=not suffix) as tmp:
            (tmp / "old.txt" if not suffix else tmp).write_text("old")
        if place.endswith("edited"):
            (out / "old.txt" if not suffix else out).write_text("edited by the user")
    return out


def _unwritten(root: Path, out: Path, ours: bool) -> dict[str, str]:
    """Every file the command may not touch: all of them, except an earlier output of its own
    (and that output's record)."""
    skip = {out.resolve(), outputs.record_path(out).resolve()} if ours else set()
    return {k: v for k, v in _tree(root).items()
            if not any(p in skip for p in [(root / k).resolve(), *(root / k).resolve().parents])}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("command,dicom", [("export", False), ("denoise", True),
                                           ("denoise", False)])
def test_overwrite_never_removes_what_the_command_did_not_write(trained, tmp_path_factory, place,
                                                                 command, dicom):
    """Every layout of output against input / workdir (equal, nested either way, siblings,
    earlier outputs edited or not), each with --overwrite."""
    root = tmp_path_factory.mktemp("layout")
    (root / "unrelated").mkdir()
    (root / "unrelated" / "keep.txt").write_text("keep")
    if command == "export":
        workdir = root / "run"
        shutil.copytree(trained["run"], workdir)
        out = _place(root, workdir, place, cj_export.COMMAND, "")
        ours = place == "earlier output"
        before = _unwritten(root, out, ours)
        exported, params, manifest = trained["parts"]
        manifest = {**manifest, "checkpoint": {**manifest["checkpoint"],
                                               "workdir": str(workdir.resolve())}}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cj_export, "build", lambda *a, **k: (exported, params, manifest))
            code = cj_export.main(["export", f"--workdir={workdir}", f"--out={out}",
                                   "--overwrite"])
    else:
        source = dicom_series(root / "scan") if dicom else _stack(root / "scan.npy")
        (root / "notes.txt").write_text("beside the scan")
        out = _place(root, source, place, "consensus_jax.denoise", "" if dicom else ".npy")
        ours = place == "earlier output"
        before = _unwritten(root, out, ours)
        code = denoise_main(["denoise", f"--model={trained['model']}", f"--input={source}",
                             f"--output={out}", "--overwrite"])
    allowed = place in ("new sibling", "earlier output")
    assert code == (0 if allowed else errors.OutputExistsError.exit_code), (command, place)
    after = _tree(root)
    assert {k: after.get(k) for k in before} == before, (command, place)
    if allowed:
        assert outputs.why_not_replaceable(out, f"consensus_jax.{command}") is None
