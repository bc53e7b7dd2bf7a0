"""Trains configs/tiny.py into a workdir and ends the process abruptly (``os._exit``, no
cleanup) right after one step, as a crash between steps would: the tests of exact resume inject
this hook into the training loop; the library knows nothing of it.

  python tests/crash_run.py WORKDIR STEP [group.key=value ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import tiny  # noqa: E402
from consensus_jax import experiment  # noqa: E402

#: The exit status of the crash: none of the statuses of consensus_jax.errors.
CRASH_EXIT_STATUS = 86


class CrashAfter(experiment.Hook):
    """Ends the process right after step ``at``."""

    needs_metrics = False

    def __init__(self, step: int):
        self.at = step

    def __call__(self, loop: experiment.Loop, step: int) -> None:
        os._exit(CRASH_EXIT_STATUS)


def main(argv: list[str]) -> None:
    workdir, step, *overrides = argv
    config = tiny.get_config()
    config.train.tensorboard = config.train.progress = False
    for item in overrides:
        key, value = item.split("=", 1)
        group, name = key.split(".")
        config[group][name] = type(config[group][name])(value)
    experiment.fit(config, workdir, hooks=[CrashAfter(int(step))])


if __name__ == "__main__":
    main(sys.argv[1:])
