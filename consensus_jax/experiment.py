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
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from consensus_jax import input_pipeline, patches, train_lib

#: Config keys added after runs were first stored, with the value that older runs used: a
#: stored config without the key reads as (and compares equal to) one that gives it this value.
ADDED_KEY_DEFAULTS = MappingProxyType({"optim.schedule": "constant"})

#: Config keys that do not change the trained parameters; a workdir may be resumed with others.
#: (model.layer_impl only picks how the same layers are computed.)
RUNTIME_KEYS = frozenset({
    "model.layer_impl",
    "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.debug_exit_at_step", "train.tensorboard", "train.progress", "data.data_dir",
    "eval.batch_size",
})


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"group.key": value} of a (nested) ConfigDict or dict."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, name + "."))
        else:
            out[name] = v
    return out


def check_workdir_config(workdir: Path, config: Any, allow_config_change: bool) -> None:
    """Stores the config as JSON in a new workdir; refuses a different one in a used workdir."""
    path = workdir / "config.json"
    current = flatten_config(config)
    if path.exists():
        stored = json.loads(path.read_text())
        stored = {**ADDED_KEY_DEFAULTS, **stored}
        diff = {k: (stored.get(k), current.get(k)) for k in sorted(set(stored) | set(current))
                if k not in RUNTIME_KEYS and stored.get(k) != current.get(k)}
        if diff and not allow_config_change:
            lines = "\n".join(f"  {k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{workdir} holds a run with a different config:\n{lines}\nUse a new --workdir, "
                "or pass --allow_config_change to continue this run with the new values."
            )
        if not diff:
            return
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config stored beside a run's checkpoints, as a ConfigDict."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training workdir (train.py "
                                "writes config.json there when it starts).")
    nested: dict[str, Any] = {}
    for key, value in {**ADDED_KEY_DEFAULTS, **json.loads(path.read_text())}.items():
        node = nested
        *groups, leaf = key.split(".")
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = value
    return ml_collections.ConfigDict(nested)


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis "data"."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def restore_params(workdir: str | Path, method: train_lib.Method,
                   schedule: str = "constant") -> tuple[Any, int]:
    """The parameters of a run's latest checkpoint and its step (``schedule``: the run's
    ``optim.schedule``, which fixes the layout of the stored optimizer state)."""
    workdir = Path(workdir)
    mngr = checkpoint_manager(workdir, keep=1_000_000)
    step = mngr.latest_step()
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {workdir / 'checkpoints'}: train it first "
                                f"(`python train.py --workdir={workdir} ...`).")
    optimizer = train_lib.make_optimizer(1.0, schedule, total_steps=1)
    shapes = jax.eval_shape(
        lambda: train_lib.create_train_state(method, optimizer, jax.random.PRNGKey(0)))
    # Restore onto this machine's devices, whatever the topology the run was saved from.
    replicated = NamedSharding(make_mesh(), P())
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)
    state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    mngr.close()
    return state.params, int(step)


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


def _num_steps(config: Any, steps_per_epoch: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    if config.train.num_epochs <= 0:
        raise ValueError("Set train.num_steps > 0 or train.num_epochs > 0.")
    return int(config.train.num_epochs) * steps_per_epoch


def fit(config: Any, workdir: str | Path, allow_config_change: bool = False
        ) -> tuple[train_lib.TrainState, train_lib.Method]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the state.

    A finished run (latest checkpoint at the final step) is returned as is, never retrained.
    """
    workdir = Path(workdir)
    method = train_lib.Method.from_config(config)
    tcfg = config.train
    check_workdir_config(workdir, config, allow_config_change)

    pid, nproc = jax.process_index(), jax.process_count()
    mesh = make_mesh()
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

    mngr = checkpoint_manager(workdir, tcfg.keep_checkpoints)
    start = mngr.latest_step() or 0
    if start:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        state = mngr.restore(start, args=ocp.args.StandardRestore(abstract))
    if start >= total_steps:
        print(f"{workdir}: already trained to step {start} of {total_steps}; nothing to do.")
        mngr.close()
        return state, method

    train_step = train_lib.make_train_step(method, optimizer,
                                           out_shardings=(replicated, replicated))
    logger = _Logger(workdir, bool(tcfg.get("tensorboard", True)) and pid == 0)
    exit_at = int(tcfg.get("debug_exit_at_step", 0) or 0)
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
                mngr.save(done, args=ocp.args.StandardSave(state))
        bar.update(1)
        if exit_at and done == exit_at:
            os._exit(3)  # simulates a crash between steps (tests of exact resume)
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    return state, method


def evaluate_on_test(config: Any, method: train_lib.Method, params: Any, workdir: Path,
                     step: int) -> dict[str, float]:
    """Mean test metrics of the trained run against the first reference (eval_summary.json).

    The full comparison with the baselines is evaluate.py's job; this is the quick check that
    closes a training run.
    """
    from consensus_jax import evaluation

    images = input_pipeline.load_split(config.data, config.data.test_split, config.modality)
    outputs = evaluation.predict(method, params, images, config.eval.batch_size)
    summary: dict[str, Any] = {"step": step}
    first_ref = evaluation.REFERENCES[config.modality][0][1]
    for result in evaluation.score(config.modality, outputs, images):
        if result.reference == first_ref:
            for metric, values in result.values.items():
                summary[f"{result.method} {metric}"] = float(np.mean(values))
    path = workdir / "eval_summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, path)
    print(f"{workdir}: test split vs {first_ref} at step {step}: " + ", ".join(
        f"{k} {v:.2f}" for k, v in summary.items() if k != "step"))
    return summary


def train_and_evaluate(config: Any, workdir: str | Path, allow_config_change: bool = False
                       ) -> tuple[train_lib.TrainState, dict[str, float]]:
    """Trains (or resumes) the run, then scores it on the test split."""
    state, method = fit(config, workdir, allow_config_change)
    if jax.process_index() != 0:
        return state, {}
    params = jax.device_get(state.params)
    summary = evaluate_on_test(config, method, params, Path(workdir), int(state.step))
    return state, summary


def _globalise(local: dict[str, jax.Array], sharding: NamedSharding, nproc: int
               ) -> dict[str, jax.Array]:
    if nproc == 1:
        return jax.device_put(local, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}
