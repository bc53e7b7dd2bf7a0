"""`make demo` / `make demo-mri`: prepare the built-in data, train the three schemes, evaluate.

  python demo.py --modality=ct     # quick CT experiment (configs/ct_quick.py)
  python demo.py --modality=mri    # quick MRI experiment (configs/mri_quick.py)

Each stage runs as its own process (the same commands a user would type, printed before they
run); finished stages are reused (data_prep and train.py resume or skip), so an interrupted demo
continues where it stopped. Wall time and peak memory of every stage go to timings.json beside
the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from consensus_jax import errors
from consensus_jax.workdir import atomic_write

KINDS = ("noise2clean", "noise2noise", "consensus")
SETTINGS = {
    "ct": {"prep": ["-m", "data_prep.ct", "--config=quick"], "config": "configs/ct_quick.py"},
    "mri": {"prep": ["-m", "data_prep.mri", "--config=quick"], "config": "configs/mri_quick.py"},
}


def _stage(name: str, args: list[str]) -> dict:
    """Runs ``python args`` in a child process; returns its wall time and peak memory."""
    cmd = [sys.executable, *args]
    print(f"\n== {name}: {shlex.join(['python', *args])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    # wait4 gives this child's own resource usage: its peak resident memory.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"Stage {name!r} failed (exit status {proc.returncode}); fix the error above and "
              "rerun: finished stages are reused.", file=sys.stderr)
        sys.exit(proc.returncode if proc.returncode > 0 else 1)
    return {"stage": name, "command": shlex.join(["python", *args]), "wall_s": round(wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one message and exit status 2, as every command
        raise errors.ConfigError(f"{message}. Run python demo.py --help for the flags.")


@errors.boundary
def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", choices=sorted(SETTINGS), default="ct")
    parser.add_argument("--data_dir", default="data/tfds")
    parser.add_argument("--work_root", default="work_dirs")
    parser.add_argument("--out", default=None, help="default: results/<modality>_quick")
    parser.add_argument("--verbose", action="store_true",
                        help="Show the traceback of every stage's error.")
    # The spelling of the absl commands' full help; the demo has no other flags to show.
    parser.add_argument("--helpfull", action="help", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    errors.set_verbose(args.verbose)  # the stages inherit it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    s = SETTINGS[args.modality]
    name = f"{args.modality}_quick"
    out = Path(args.out or f"results/{name}")
    data = [f"--config.data.data_dir={args.data_dir}"]
    timings = [_stage("prepare data", [*s["prep"], f"--data_dir={args.data_dir}"])]
    runs = []
    for kind in KINDS:
        workdir = Path(args.work_root) / name / kind
        extra = [] if kind == "consensus" else ["--config.loss.beta_r=0"]
        timings.append(_stage(f"train {kind}", [
            "train.py", f"--config={s['config']}", f"--workdir={workdir}",
            f"--config.loss.kind={kind}", *extra, *data]))
        runs.append(str(workdir))
    timings.append(_stage("evaluate", ["evaluate.py", "--runs=" + ",".join(runs), f"--out={out}"]))
    total = sum(t["wall_s"] for t in timings)
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
              "total_wall_s": round(total, 1), "stages": timings}
    atomic_write(out / "timings.json", json.dumps(record, indent=1))
    print("\n| stage | wall (s) | peak memory (MB) |\n|---|---|---|")
    for t in timings:
        print(f"| {t['stage']} | {t['wall_s']} | {t['peak_rss_mb']} |")
    print(f"| total | {total:.0f} | |")
    print(f"\nTable: {out / 'table.md'}\nFigure: {out / 'figure.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
