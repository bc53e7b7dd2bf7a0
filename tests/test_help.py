"""Every command prints its usage, its flags with their help texts, on ``--help`` (``-h``,
``--helpfull``) and exits with status 0, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consensus_jax import errors

ROOT = Path(__file__).resolve().parents[1]

#: command -> a flag of its own that the usage must list
COMMANDS = {
    "train.py": "--workdir",
    "evaluate.py": "--figure_slice",
    "ablation.py": "--seeds",
    "demo.py": "--modality",
    "-m data_prep.ct": "--tv_iterations",
    "-m data_prep.mri": "--snrs",
    "-m consensus_jax.export": "--workdir",
    "-m consensus_jax.denoise": "--batch_size",
}


def _run(command: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.VERBOSE_ENV}
    return subprocess.run([sys.executable, *command.split(), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_prints_the_flags_and_exits_0(command):
    result = _run(command, "--help")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert COMMANDS[command] in result.stdout, result.stdout[-3000:]
    assert "Traceback" not in output and "Error" not in result.stderr, output[-3000:]


@pytest.mark.parametrize("command, spelling", [
    ("-m consensus_jax.export", "-h"), ("-m consensus_jax.export", "--helpfull"),
    ("train.py", "-h"), ("train.py", "--helpfull"), ("demo.py", "--helpfull"),
])
def test_other_spellings_of_help(command, spelling):
    result = _run(command, spelling)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert COMMANDS[command] in result.stdout


def test_help_wins_over_missing_required_flags_and_bad_values(tmp_path):
    # train.py requires --config and --workdir; the help comes first, nothing is written.
    result = _run("train.py", "--config.train.batch_size=0", f"--workdir={tmp_path / 'w'}",
                  "--help")
    assert result.returncode == 0 and "--workdir" in result.stdout, result.stderr[-3000:]
    assert not (tmp_path / "w").exists()


def test_which_arguments_ask_for_help():
    asks = errors.help_requested
    for spelling in ("--help", "-help", "-h", "--helpfull", "--helpshort", "--help=true", "-?"):
        assert asks(["prog", "--x=1", spelling]), spelling
    assert asks(["prog", "--helpfull"]) == "helpfull"
    for argv in (["prog"], ["prog", "--help=false"], ["prog", "--", "--help"],
                 ["prog", "--helper=1"], ["help"], ["prog", "help"]):
        assert asks(argv) is None, argv
