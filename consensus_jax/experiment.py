"""The host training loop: data, sharding, patches per epoch, checkpoints with exact resume, logs.

Determinism: the patches of step ``s`` depend only on (seed, s), the slice order of epoch ``e`` only
on (seed, e). Restarting from the checkpoint of step ``k`` therefore replays exactly the batches of
an uninterrupted run, and reaches the same parameters.

Scale-out: one ``Mesh`` over every device (axis "data"); the params are replicated and each batch
is sharded over the batch axis, so ``jit`` inserts the gradient all-reduce. On several hosts
(``jax.distributed.initialize()``) each host reads its own shard of the slices and contributes its
share of every global batch (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from consensus_jax import input_pipeline, patches, train_lib
from consensus_jax import workdir as wd

#: Environment variable for the tests of exact resume: the process exits (code 3, no cleanup)
#: right after this step, as a crash between steps would.
CRASH_AFTER_STEP = "CONSENSUS_JAX_CRASH_AFTER_STEP"


class _Logger:
    """metrics.jsonl always; TensorBoard scalars when enabled (TF imported on first use)."""

    def __init__(self, workdir: Path, tensorboard: bool):
        self.path = workdir / "metrics.jsonl"
        self.tensorboard = tensorboard
        self.writer = None
        self.workdir = workdir

    def write(self, step: int, scalars: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.tensorboard:
            if self.writer is None:
                tf = input_pipeline.import_tensorflow()
                self.writer = tf.summary.create_file_writer(str(self.workdir / "tensorboard"))
            import tensorflow as tf

            with self.writer.as_default(step=step):
                for k, v in scalars.items():
                    tf.summary.scalar(k, v)
            self.writer.flush()


def _num_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    if config.train.num_epochs <= 0:
        raise ValueError("Set train.num_steps > 0 or train.num_epochs > 0.")
    return int(config.train.num_epochs) * steps_per_epoch


def fit(config: ml_collections.ConfigDict, workdir: str | Path, allow_config_change: bool = False
        ) -> tuple[train_lib.TrainState, train_lib.Method]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the state.

    A finished run (latest checkpoint at the final step) is returned as is, never retrained.
    """
    workdir = Path(workdir)
    method = train_lib.Method.from_config(config)
    tcfg = config.train
    wd.check_workdir_config(workdir, config, allow_config_change)

    pid, nproc = jax.process_index(), jax.process_count()
    mesh = train_lib.make_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    if tcfg.batch_size % mesh.size:
        raise ValueError(f"train.batch_size={tcfg.batch_size} must be divisible by the number of "
                         f"devices ({mesh.size}).")
    local_batch = tcfg.batch_size // nproc

    images = input_pipeline.load_split(config.data, config.data.train_split, config.modality,
                                       keys=method.input_keys(), process_index=pid,
                                       process_count=nproc)
    images = {k: jnp.asarray(v) for k, v in images.items()
              if k not in ("patient_id", "slice_index")}
    num_slices = next(iter(images.values())).shape[0]
    steps_per_epoch = (num_slices * tcfg.patches_per_slice) // local_batch
    if steps_per_epoch < 1:
        raise ValueError(f"{num_slices} slices x {tcfg.patches_per_slice} patches per slice is "
                         f"less than one batch of {local_batch}: lower train.batch_size.")
    total_steps = _num_steps(config, steps_per_epoch)

    optimizer = train_lib.make_optimizer(config.optim.learning_rate,
                                         config.optim.get("schedule", "constant"), total_steps)
    root = jax.random.PRNGKey(config.seed)
    k_init, k_order, k_patch, k_step = jax.random.split(root, 4)
    state = jax.device_put(train_lib.create_train_state(method, optimizer, k_init), replicated)

    mngr = wd.checkpoint_manager(workdir, tcfg.keep_checkpoints)
    start = mngr.latest_step() or 0
    if start:
        state = wd.restore_state(workdir / wd.CHECKPOINTS, start, state)
    if start >= total_steps:
        print(f"{workdir}: already trained to step {start} of {total_steps}; nothing to do.")
        mngr.close()
        return state, method

    train_step = train_lib.make_train_step(method, optimizer,
                                           out_shardings=(replicated, replicated))
    logger = _Logger(workdir, bool(tcfg.get("tensorboard", True)) and pid == 0)
    exit_at = int(os.environ.get(CRASH_AFTER_STEP, "0") or 0)
    bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
               disable=pid != 0 or not tcfg.get("progress", True), desc=method.kind)
    order, order_epoch = None, -1
    t_last, s_last = time.perf_counter(), start
    metrics = None
    for step in range(start, total_steps):
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order = patches.epoch_slice_order(jax.random.fold_in(k_order, epoch), num_slices,
                                              tcfg.patches_per_slice)
            order_epoch = epoch
        idx = jax.lax.dynamic_slice_in_dim(order, i * local_batch, local_batch)
        key = jax.random.fold_in(k_patch, step * nproc + pid)
        local = patches.random_patch_batch(key, images, idx, tcfg.patch_size_px,
                                           bool(tcfg.augment))
        batch = _globalise(local, batch_sharding, nproc)
        state, metrics = train_step(state, batch, jax.random.fold_in(k_step, step))
        done = step + 1
        if done % tcfg.log_every_steps == 0 or done % tcfg.checkpoint_every_steps == 0 \
                or done == total_steps:
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            train_lib.check_finite(host, done)
            now = time.perf_counter()
            rate = (done - s_last) * tcfg.batch_size / max(now - t_last, 1e-9)
            t_last, s_last = now, done
            logger.write(done, {**host, "epoch": epoch + (i + 1) / steps_per_epoch,
                                "patches_per_s": rate})
            bar.set_postfix(epoch=f"{epoch + 1}", loss=f"{host['total']:.4g}",
                            patches_s=f"{rate:.0f}")
            if done % tcfg.checkpoint_every_steps == 0 or done == total_steps:
                wd.save_state(mngr, done, state)
        bar.update(1)
        if exit_at and done == exit_at:
            os._exit(3)  # simulates a crash between steps (tests of exact resume)
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    return state, method


def _globalise(local: dict[str, jax.Array], sharding: NamedSharding, nproc: int
               ) -> dict[str, jax.Array]:
    if nproc == 1:
        return jax.device_put(local, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}
