"""Input pipeline overhead: training steps fed from the TFRecord dataset vs. from memory.

    python -m bench.bench_input_pipeline --config=configs/ct_quick.py --steps=20 [--out=FILE]

The trainer reads a split once (TFRecord -> host numpy, ``input_pipeline.load_split``), keeps the
slices on the device and cuts every batch there (``patches.random_patch_batch``). This compares,
alternating A/B in one process: (A) the real loop — patch sampling from the loaded slices plus the
step, with the one-time read amortised over one epoch; (B) the step alone on a batch already in
memory. Reported: the per-step overhead of the feed, and the total overhead over the config's
training run (the one-time read, TensorFlow's import excluded, spread over the run's steps);
the target is < 5%.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import jax
import jax.numpy as jnp

from consensus_jax import input_pipeline, methods, patches, train_lib


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ct_quick.py")
    parser.add_argument("--data_dir", default="data/tfds")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    config = _load_config(args.config)
    config.data.data_dir = args.data_dir
    method = methods.from_config(config)
    t0 = time.perf_counter()
    input_pipeline.import_tensorflow()
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    host = input_pipeline.load_split(config.data, config.data.train_split, config.modality,
                                     keys=method.input_keys())
    load_s = time.perf_counter() - t0
    images = {k: jnp.asarray(v) for k, v in host.items()
              if k not in ("patient_id", "slice_index")}
    num_slices = next(iter(images.values())).shape[0]
    tc = config.train
    steps_per_epoch = num_slices * tc.patches_per_slice // tc.batch_size
    opt = train_lib.make_optimizer(config.optim.learning_rate)
    step = train_lib.make_train_step(method, opt)
    state = train_lib.create_train_state(method, opt, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    order = patches.epoch_slice_order(key, num_slices, tc.patches_per_slice)

    def sample(i):
        idx = jax.lax.dynamic_slice_in_dim(order, (i * tc.batch_size) % order.shape[0],
                                           tc.batch_size)
        return patches.random_patch_batch(jax.random.fold_in(key, i), images, idx,
                                          tc.patch_size_px, bool(tc.augment))

    fixed = jax.block_until_ready(sample(0))
    state, m = step(state, fixed, key)
    jax.block_until_ready(m)
    times = {"from TFRecord slices": [], "from memory": []}
    # Alternate single steps (A, B, A, B, ...): the cores may be shared, and load changes on the
    # scale of seconds; each step is timed to completion, the sampling of A included.
    for i in range(args.steps * args.repeats):
        t0 = time.perf_counter()
        state, m = step(state, sample(i), key)
        jax.block_until_ready(m)
        times["from TFRecord slices"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        state, m = step(state, fixed, key)
        jax.block_until_ready(m)
        times["from memory"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    run_steps = tc.num_steps if tc.num_steps > 0 else tc.num_epochs * steps_per_epoch
    per_step = med["from TFRecord slices"] / med["from memory"] - 1
    overhead = (med["from TFRecord slices"] + load_s / run_steps) / med["from memory"] - 1
    lines = [f"### Input pipeline, {config.data.name}/{config.data.config} ({num_slices} slices, "
             f"{steps_per_epoch} steps per epoch, batch {tc.batch_size} x {tc.patch_size_px} px;"
             f" `python -m bench.bench_input_pipeline --config={args.config} "
             f"--steps={args.steps}`)", "",
             f"| feed | s per step (median of {args.steps * args.repeats}) | min-max |",
             "|---|---|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k]:.4f} | {min(v):.4f}-{max(v):.4f} |")
    lines += ["", f"Per-step overhead of the feed (on-device patch sampling): "
              f"**{100 * per_step:+.1f}%**. One-time TFRecord read {load_s:.2f} s (TensorFlow "
              f"import, {import_s:.1f} s, not counted), spread over the config's {run_steps} "
              f"steps: total overhead **{100 * overhead:+.1f}%** (target < 5%).", ""]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
