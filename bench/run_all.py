"""`make bench`: every benchmark in one run, written to bench/RESULTS.md.

    python -m bench.run_all --out=bench/RESULTS.md [--only=ssim,ct,...]

Each section names the command that produced it; the header names the machine. The end-to-end
section reports the stage timings that the last `make demo` recorded (results/ct_quick/
timings.json) rather than rerunning the demo. A benchmark that cannot run here (a missing optional
package) is reported as such, not silently skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

#: (key, title, module, argv) in the order they appear in RESULTS.md.
BENCHES = (
    ("train_step", "Consensus train step: JAX vs PyTorch", "bench.bench_train_step",
     ["--sizes=quick,paper", "--repeats=3"]),
    ("conv_layers", "Where the step's time goes: 3x3 convolutions, JAX vs PyTorch",
     "bench.bench_conv_layers", ["--sizes=quick,paper", "--repeats=5"]),
    ("ct", "CT projector and FBP vs skimage / astra", "bench.bench_ct", ["--repeats=3"]),
    ("sense", "CG-SENSE vs sigpy", "bench.bench_sense", ["--repeats=5", "--batch=4"]),
    ("ssim", "SSIM vs skimage", "bench.bench_ssim", ["--size=512", "--batch=16"]),
    ("input_pipeline", "Input pipeline overhead", "bench.bench_input_pipeline",
     ["--config=configs/ct_quick.py", "--steps=30", "--repeats=5"]),
    ("loop", "Training loop efficiency: experiment.fit vs the isolated step", "bench.bench_loop",
     ["--sizes=tiny", "--dispatch=1,10,100", "--repeats=3"]),
    ("denoise", "Denoising new scans: exported model size, seconds per 512 x 512 slice",
     "bench.bench_denoise", ["--sizes=quick,paper", "--batch=4", "--repeats=3"]),
)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{cpu}, {os.cpu_count()} cores visible; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, jax {jax.__version__} on "
            f"{jax.default_backend()} ({devices})")


def end_to_end(path: Path = Path("results/ct_quick/timings.json")) -> str:
    if not path.exists():
        return f"No {path}: run `make demo` first; its stage timings are reported here.\n"
    record = json.loads(path.read_text())
    lines = [f"Recorded by `make demo` on {record['date']} ({record['cpus']} cores):", "",
             "| stage | command | wall (s) | peak memory (MB) |", "|---|---|---|---|"]
    for s in record["stages"]:
        lines.append(f"| {s['stage']} | `{s['command']}` | {s['wall_s']} | {s['peak_rss_mb']} |")
    lines.append(f"| total | | {record['total_wall_s']} | |")
    return "\n".join(lines) + "\n"


def attempts_log(path: Path = Path("bench/PERF_LOG.md")) -> str:
    """The performance log (every attempt at the train step, including those that did not help),
    copied in under one more heading level so that RESULTS.md holds the whole record."""
    if not path.exists():
        return f"## Performance attempts\n\nNo {path}.\n"
    text = "\n".join("#" + line if line.startswith("#") else line
                     for line in path.read_text().splitlines())
    return f"## Performance attempts (copied from `{path}`)\n\n{text}\n"


def run_isolated(module: str, argv: list[str]) -> str:
    """Runs ``python -m module argv --out=<temporary file>`` in a fresh process and returns the
    table it wrote there, or a "Not run" line with the end of its stderr.

    A fresh process per benchmark, as a user running the one command gets: in one shared process
    the allocator state left by the train-step benchmark made the per-layer weight-gradient
    timings of the next one vary by up to 2.6x (bench/PERF_LOG.md, 2026-11-25 07:17).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.md"
        proc = subprocess.Popen([sys.executable, "-m", module, *argv, f"--out={out}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        tail: list[str] = []
        for line in proc.stderr:  # progress goes on to the console as it comes
            sys.stderr.write(line)
            tail = (tail + [line.rstrip()])[-5:]
        if proc.wait() != 0 or not out.exists():
            return (f"Not run: `python -m {module}` exited with {proc.returncode}; the end of its "
                    "stderr:\n\n```\n" + "\n".join(tail) + "\n```\n")
        return out.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/RESULTS.md")
    parser.add_argument("--only", default="", help="comma-separated keys of BENCHES")
    args = parser.parse_args(argv)
    only = {k for k in args.only.split(",") if k}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    parts = [f"# Benchmark results\n\nWritten by `python -m bench.run_all` (`make bench`) on "
             f"{time.strftime('%Y-%m-%d %H:%M')} at commit {commit}.\n\nMachine: {machine()}.\n\n"
             "Timings are medians over repeats after a warm-up; competing implementations are "
             "timed alternately in one process, because the cores may be shared.\n"]
    for key, title, module, bench_argv in BENCHES:
        if only and key not in only:
            continue
        print(f"== {title}", flush=True)
        t0 = time.perf_counter()
        table = run_isolated(module, bench_argv)
        parts.append(f"## {title}\n\n`python -m {module} {' '.join(bench_argv)}` "
                     f"({time.perf_counter() - t0:.0f} s)\n\n{table}\n")
    if not only or "end_to_end" in only:
        parts.append(f"## End to end: `make demo`\n\n{end_to_end()}\n")
    if not only:
        parts.append(attempts_log())
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, out)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
