"""Loop efficiency: steps/s of the real training loop (``experiment.fit``) vs the isolated step.

The isolated step is the jitted consensus train step on one batch already on the device,
dispatched back to back and blocked at the end. The loop is ``experiment.fit`` itself on in-memory
synthetic slices (no TFRecord reads, no TensorBoard, no validation, the progress bar on, a log line
every ``--log_every`` steps): it samples each step's patches, dispatches, and fetches the metrics
at every log step. The loop's time per step is the median over its log intervals (after the first,
which holds the compilation) of the interval's wall time over its steps, from the
``patches_per_s`` that ``fit`` logs. Both are measured in the same process, alternating, for each
``train.steps_per_dispatch`` in ``--dispatch`` (a dispatch never runs past a log step).

    python -m bench.bench_loop --sizes=tiny --dispatch=1,10,100          # CPU: the overhead target
    python -m bench.bench_loop --sizes=quick,paper --dispatch=1,100      # GPU: the efficiency

Host overhead per step = loop - isolated step. Targets: at most 0.4 ms per step with the tiny
model (a ~1 ms step on CPU), and a loop efficiency (isolated / loop) of at least 90% on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.bench_train_step import Size
from configs import tiny
from consensus_jax import experiment, methods, train_lib

# Size.steps here: the steps of each loop run and of each isolated-step timing.
SIZES = {
    "tiny": Size("tiny", 4, 2, 16, 4, steps=1000),
    "quick": Size("quick", 16, 3, 64, 16, steps=300),
    "paper": Size("paper", 32, 4, 96, 40, steps=300),
}


def _config(size: Size, steps: int, per_dispatch: int, log_every: int):
    config = tiny.get_config()
    config.data.synthetic_size_px = max(32, 2 * size.patch_px)
    config.model.base_features, config.model.depth = size.base_features, size.depth
    config.train.batch_size, config.train.patch_size_px = size.batch, size.patch_px
    config.train.patches_per_slice = 40
    config.train.num_steps = steps
    config.train.log_every_steps = log_every
    config.train.checkpoint_every_steps = 10**9  # only the final one
    config.train.eval_every_steps = 0
    config.train.tensorboard = False
    config.train.steps_per_dispatch = per_dispatch
    return config


def loop_step_seconds(size: Size, steps: int, per_dispatch: int, log_every: int) -> float:
    """Seconds per step of ``experiment.fit`` between log steps (median over the intervals
    after the first), in a fresh workdir."""
    with tempfile.TemporaryDirectory() as workdir:
        experiment.fit(_config(size, steps, per_dispatch, log_every), Path(workdir))
        rates = [json.loads(line).get("patches_per_s")
                 for line in (Path(workdir) / "metrics.jsonl").open()]
    rates = [r for r in rates if r][1:]
    if not rates:
        raise ValueError(f"{steps} steps with a log every {log_every} give no timed interval "
                         "after the first: raise the steps or lower --log_every.")
    return statistics.median(size.batch / r for r in rates)


def isolated_step_seconds(size: Size, steps: int) -> float:
    """Seconds per step of the jitted train step alone on one device-resident batch."""
    config = _config(size, steps, 1, 10**9)
    method = methods.from_config(config)
    optimizer = train_lib.make_optimizer(config.optim.learning_rate)
    state = train_lib.create_train_state(method, optimizer, jax.random.PRNGKey(0))
    step = train_lib.make_train_step(method, optimizer)
    rng = np.random.default_rng(0)
    shape = (size.batch, size.patch_px, size.patch_px, 1)
    batch = {k: jnp.asarray(rng.normal(size=shape).astype(np.float32))
             for k in method.input_keys()}
    key = jax.random.PRNGKey(1)
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch, key)
    jax.block_until_ready(m)
    return (time.perf_counter() - t0) / steps


def measure(size: Size, dispatch: list[int], repeats: int, log_every: int) -> list[dict]:
    rows = []
    for k in dispatch:
        loop_runs, step_runs = [], []
        for _ in range(repeats):
            loop_runs.append(loop_step_seconds(size, size.steps, k, log_every))
            step_runs.append(isolated_step_seconds(size, size.steps))
        loop, step = statistics.median(loop_runs), statistics.median(step_runs)
        rows.append({"size": size.name, "steps_per_dispatch": k, "loop_ms": 1e3 * loop,
                     "step_ms": 1e3 * step, "overhead_ms": 1e3 * (loop - step),
                     "efficiency": step / loop if loop > 0 else float("nan")})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict], log_every: int) -> str:
    lines = [f"Backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax "
             f"{jax.__version__}; a log line every {log_every} steps; medians of the repeats.", "",
             "| size | steps per dispatch | loop ms/step | isolated step ms | host overhead "
             "ms/step | loop efficiency |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['steps_per_dispatch']} | {r['loop_ms']:.2f} | "
                     f"{r['step_ms']:.2f} | {r['overhead_ms']:.2f} | "
                     f"{100 * r['efficiency']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,quick")
    parser.add_argument("--dispatch", default="1,10,100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log_every", type=int, default=100)
    parser.add_argument("--out", default=None, help="Also write the table to this file.")
    args = parser.parse_args(argv)
    rows = []
    for name in args.sizes.split(","):
        rows += measure(SIZES[name], [int(k) for k in args.dispatch.split(",")], args.repeats,
                        args.log_every)
    text = table(rows, args.log_every)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
