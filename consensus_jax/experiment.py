"""The host training loop: data, sharding, patches per epoch, checkpoints with exact resume, logs.

Determinism: the patches of step ``s`` depend only on (seed, s), the slice order of epoch ``e`` only
on (seed, e). Restarting from the checkpoint of step ``k`` therefore replays exactly the batches of
an uninterrupted run, and reaches the same parameters.

Scale-out: one ``Mesh`` over every device (axis "data"); the params are replicated and each batch
is sharded over the batch axis, so ``jit`` inserts the gradient all-reduce. On several processes
(``consensus_jax.distributed``) every process holds the whole training split, as a one-process run
does, cuts the same global batch and contributes its share of it
(``jax.make_array_from_process_local_data``). The step count, the schedule and every batch are
therefore those of a one-process run with the same config, whatever the number of processes;
only the order of the gradient reductions differs. Process 0 alone writes config.json, the logs
and TensorBoard; every process takes part in the (orbax) checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from consensus_jax import input_pipeline, metrics, outputs, runs, train_lib
from consensus_jax import workdir as wd
from consensus_jax.errors import ConfigError, MissingRunError, OutputUnwritableError

#: Environment variable for the tests of exact resume: the process exits (status
#: ``CRASH_EXIT_STATUS``, no cleanup) right after this step, as a crash between steps would.
CRASH_AFTER_STEP = "CONSENSUS_JAX_CRASH_AFTER_STEP"
CRASH_EXIT_STATUS = 86  # none of the statuses of consensus_jax.errors
#: Written into the workdir when early stopping ends a run; such a run is finished.
EARLY_STOP_FILE = "early_stop.json"


class _Logger:
    """metrics.jsonl; TensorBoard scalars when asked for (TF imported on first use)."""

    def __init__(self, workdir: Path, tensorboard: bool, enabled: bool = True):
        self.path = workdir / "metrics.jsonl"
        self.enabled = enabled  # False: another process writes the logs
        self.tensorboard = tensorboard and enabled
        self.writer = None
        self.workdir = workdir

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
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
            # No flush here: the writer batches events (and flushes every 2 minutes); a flush
            # per log step stalled CPU training by about 1 s each time.

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class _Teacher:
    """The trained consensus run a ``distill`` network learns from, and its outputs z (Eq. 9)."""

    def __init__(self, method: train_lib.Method, config: ml_collections.ConfigDict):
        where = f"loss.teacher={method.teacher}"
        try:
            t_method, self.params, self.step, t_config = runs.load_run(method.teacher)
        except FileNotFoundError as e:
            raise MissingRunError(f"{where}: {e}") from None
        if t_method.kind != "consensus":
            raise ConfigError(f"{where} is a {t_method.kind!r} run; distillation needs a trained "
                              "consensus pair (loss.kind='consensus').")
        ours = (config.modality, config.data.name, config.data.config)
        theirs = (t_config.modality, t_config.data.name, t_config.data.config)
        if ours != theirs:
            raise ConfigError(f"{where} was trained on {'/'.join(theirs)}, this run trains on "
                              f"{'/'.join(ours)}: distil on the teacher's own dataset.")
        self.method, self.batch_size = t_method, int(config.eval.batch_size)
        self.data_keys = tuple(dict.fromkeys(
            (*[k for k in method.input_keys() if k != train_lib.TEACHER_KEY], "x1", "x2")))
        if jax.process_index() == 0:
            print(f"Teacher: {method.teacher}, step {self.step} (its best checkpoint).")

    def add_outputs(self, images: dict[str, np.ndarray], keep: tuple[str, ...] | None = None
                    ) -> dict[str, np.ndarray]:
        """``images`` with the teacher's output on every whole slice; ``keep``: the keys to keep
        besides it (and the slice labels)."""
        (z,) = runs.predict(self.method, self.params, images, self.batch_size).values()
        out = {k: v for k, v in images.items()
               if keep is None or k in keep or k in ("patient_id", "slice_index")}
        out[train_lib.TEACHER_KEY] = z
        return out


class _Validator:
    """Label-free validation on whole held-out slices, the best checkpoint, and the guards.

    Every ``train.eval_every_steps`` the method's own loss (``train_lib.validation_terms``) is
    computed on the validation split. The checkpoint with the lowest validation loss so far is
    kept in ``<workdir>/best`` (orbax, best_fn over the stored metrics, one kept), beside the
    latest ones in ``checkpoints/`` that resume uses. The oracle scores against the reference are
    logged under ``oracle/`` and never used for a decision.
    """

    def __init__(self, config: ml_collections.ConfigDict, method: train_lib.Method,
                 workdir: Path, images: dict[str, np.ndarray], replicated: NamedSharding):
        self.method, self.modality = method, config.modality
        self.every = int(config.train.eval_every_steps)
        self.patience = int(config.train.early_stop_patience)
        self.warn_after = int(config.train.overfit_warning_evals)
        self.batch_size = int(config.eval.batch_size)
        keys = [k for k in ("x1", "x2", "x_est", "x_ref", "x_clean", method.image_input,
                            train_lib.TEACHER_KEY) if k in images]
        # Whole slices in every process, on the devices of the mesh.
        self.images = replicate({k: images[k] for k in dict.fromkeys(keys)}, replicated)
        self.pixels = int(np.prod(images["x1"].shape[1:3]))
        self.step_fn = jax.jit(partial(train_lib.validation_terms, method))
        self.best = wd.best_manager(workdir)
        step = self.best.best_step()
        self.best_step = step
        self.best_loss = float(self.best.metrics(step)["val_loss"]) if step is not None \
            else float("inf")
        self.history: list[tuple[float, float]] = []  # (validation loss, training fit term)
        self.train_fit: list[float] = []
        self.since_best = 0

    def due(self, step: int, total_steps: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total_steps)

    def evaluate(self, params: Any) -> dict[str, float]:
        sums: dict[str, float] = {}
        num = self.images["x1"].shape[0]
        for start in range(0, num, self.batch_size):
            batch = {k: v[start:start + self.batch_size] for k, v in self.images.items()}
            terms, z = self.step_fn(params, batch)
            b = z.shape[0]
            scores = metrics.image_metrics(self.modality, z, batch["x_ref"])
            for k, v in {**terms, **{f"oracle/{m}": jnp.mean(v) for m, v in scores.items()}
                         }.items():
                sums[k] = sums.get(k, 0.0) + b * float(v)
        out = {k: v / num for k, v in sums.items()}
        if "clean_error" in out:
            out["oracle/clean_error"] = out.pop("clean_error")
        return out

    def update(self, step: int, params: Any, train_fit: float | None) -> tuple[dict, str]:
        """Validates at ``step``; saves a new best checkpoint; returns (scalars, warning)."""
        vals = self.evaluate(params)
        loss = vals["loss"]
        scalars = {f"val/{k}" if not k.startswith("oracle/") else k: v for k, v in vals.items()}
        if train_fit is not None:
            scalars["gap_per_px"] = train_fit - loss / self.pixels
        improved = loss < self.best_loss
        if improved:
            self.best_loss, self.best_step, self.since_best = loss, step, 0
            self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                           metrics={"val_loss": loss})
        else:
            self.since_best += 1
        scalars["val/best_step"] = float(self.best_step)
        self.history.append((loss, train_fit if train_fit is not None else float("nan")))
        warning = ""
        recent = self.history[-(self.warn_after + 1):]
        if self.warn_after and len(recent) == self.warn_after + 1 and all(
                b[0] > a[0] and b[1] < a[1] for a, b in zip(recent, recent[1:], strict=False)):
            warning = (f"validation loss rose for {self.warn_after} evaluations in a row while "
                       f"the training loss fell (step {step}): the networks fit the training "
                       f"noise. The best checkpoint (step {self.best_step}) is kept; "
                       "evaluate.py uses it.")
            scalars["overfitting_warning"] = 1.0
        return scalars, warning

    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def close(self) -> None:
        self.best.wait_until_finished()
        self.best.close()


#: Training steps per dispatch (``train.steps_per_dispatch = 0``) by platform: on an
#: accelerator the host loop around a few-millisecond step costs more than the step itself
#: (not yet measured here: 100 is a guess); on CPU the fused loop measured slower per step than
#: one dispatch per step (``python -m bench.bench_loop``, bench/PERF_LOG.md).
DEFAULT_STEPS_PER_DISPATCH = {"cpu": 1, "gpu": 100, "tpu": 100}
# 1 runs the step alone (one dispatch per step); > 1 a fused multi-step function whose
# parameters agree with those of single steps to float32 rounding (not bitwise: XLA fuses the
# two programs differently), and bitwise whatever the number of steps per dispatch.


def steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
    """``train.steps_per_dispatch``, or the platform's default when it is 0 (or absent)."""
    k = int(config.train.get("steps_per_dispatch", 0) or 0)
    if k < 0:
        raise ConfigError(f"train.steps_per_dispatch must be >= 0 (0: the platform's default), "
                          f"got {k}.")
    return k or DEFAULT_STEPS_PER_DISPATCH.get(jax.default_backend(), 100)


#: (key, lowest allowed value, what it is) of the numeric settings ``check_config`` bounds.
_BOUNDS = (
    ("train.batch_size", 1, "patches per step"), ("train.patch_size_px", 1, "patch side"),
    ("train.patches_per_slice", 1, "patches cut from each slice per epoch"),
    ("train.num_steps", 0, "steps (0: from num_epochs)"), ("train.num_epochs", 0, "epochs"),
    ("train.log_every_steps", 1, "steps between log lines"),
    ("train.checkpoint_every_steps", 1, "steps between checkpoints"),
    ("train.keep_checkpoints", 1, "checkpoints kept"),
    ("train.eval_every_steps", 0, "steps between validations (0: none)"),
    ("eval.batch_size", 1, "slices per evaluation batch"),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key, its value and the allowed range, before anything is
    written (the loss settings are checked by ``train_lib.Method``)."""
    lr = config.optim.learning_rate
    if not (isinstance(lr, int | float) and np.isfinite(lr) and lr > 0):
        raise ConfigError(f"optim.learning_rate={lr!r}: must be a positive number (the paper: "
                          "1e-4; the quick configs: 1e-3).")
    for key, lowest, what in _BOUNDS:
        group, name = key.split(".")
        if name not in config[group]:
            continue
        value = config[group][name]
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ConfigError(f"{key}={value!r}: must be an integer >= {lowest} ({what}).")
    for name in ("beta_w", "beta_r"):
        value = config.loss.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not np.isfinite(value) or value < 0:
            raise ConfigError(f"loss.{name}={value!r}: must be a number >= 0 (0 turns the term "
                              "off).")


def _num_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    if config.train.num_epochs <= 0:
        raise ConfigError("Set train.num_steps > 0 or train.num_epochs > 0.")
    return int(config.train.num_epochs) * steps_per_epoch


def fit(config: ml_collections.ConfigDict, workdir: str | Path, allow_config_change: bool = False
        ) -> tuple[train_lib.TrainState, train_lib.Method]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the state.

    A finished run (latest checkpoint at the final step) is returned as is, never retrained.
    """
    workdir = Path(workdir)
    check_config(config)
    outputs.check_writable(workdir / "config.json", "--workdir")
    method = train_lib.Method.from_config(config)
    tcfg = config.train
    pid, nproc = jax.process_index(), jax.process_count()
    # Checked now, stored only once the run has started (below): a run that fails to start
    # (a bad value, a shape that does not fit the checkpoint) leaves the workdir as it was.
    config_changed = wd.check_workdir_config(workdir, config, allow_config_change, write=False)
    mesh = train_lib.make_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    if tcfg.batch_size % mesh.size:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} must be divisible by the number of "
                          f"devices ({mesh.size}).")

    teacher = _Teacher(method, config) if method.kind == "distill" else None
    images = input_pipeline.load_split(config.data, config.data.train_split, config.modality,
                                       keys=teacher.data_keys if teacher else method.input_keys())
    if teacher is not None:
        images = teacher.add_outputs(images, keep=method.input_keys())
    images = {k: v for k, v in images.items() if k not in ("patient_id", "slice_index")}
    num_slices, height, width = next(iter(images.values())).shape[:3]
    if tcfg.patch_size_px > min(height, width):
        raise ConfigError(f"train.patch_size_px={tcfg.patch_size_px} is larger than the training "
                          f"images ({height} x {width}); lower it.")
    steps_per_epoch = (num_slices * tcfg.patches_per_slice) // tcfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"{num_slices} slices x {tcfg.patches_per_slice} patches per slice is "
                          f"less than one batch of {tcfg.batch_size}: lower train.batch_size.")
    total_steps = _num_steps(config, steps_per_epoch)

    optimizer = train_lib.make_optimizer(config.optim.learning_rate,
                                         config.optim.get("schedule", "constant"), total_steps)
    root = jax.random.PRNGKey(config.seed)
    k_init, k_order, k_patch, k_step = jax.random.split(root, 4)
    state = jax.device_put(train_lib.create_train_state(method, optimizer, k_init), replicated)

    mngr = wd.checkpoint_manager(workdir, tcfg.keep_checkpoints)
    start = 0
    if mngr.all_steps():
        state, start = wd.restore_latest_intact(workdir / wd.CHECKPOINTS, mngr.all_steps(),
                                                state)
        mngr.reload()  # a damaged step moved aside is no longer listed
    stopped = workdir / EARLY_STOP_FILE
    if start >= total_steps or stopped.exists():
        why = f"stopped early at step {start}" if stopped.exists() else \
            f"already trained to step {start} of {total_steps}"
        if pid == 0:
            print(f"{workdir}: {why}; nothing to do.")
        mngr.close()
        return state, method
    if config_changed and pid == 0:
        wd.store_config(workdir, config, step=start)
    who = f" (process {pid} of {nproc})" if nproc > 1 else ""
    if start:
        tqdm.write(f"{workdir}: resuming from step {start}{who}.")

    validator = None
    val_split = config.data.validation_split
    if int(tcfg.eval_every_steps) > 0:
        if input_pipeline.has_split(config.data, val_split):
            val_images = input_pipeline.load_split(config.data, val_split, config.modality)
            if teacher is not None:
                val_images = teacher.add_outputs(val_images)
            validator = _Validator(config, method, workdir, val_images, replicated)
        elif pid == 0:
            built_with = input_pipeline.dataset_metadata(config.data).get(
                "num_validation_patients")
            why = ("it was built with --config.num_validation_patients=0" if built_with == 0
                   else "it was built before validation splits existed")
            print(f"Note: the dataset {config.data.name}/{config.data.config} has no "
                  f"{val_split!r} split ({why}): training without validation, best-checkpoint "
                  "selection or early stopping. Rebuild it with data_prep and "
                  "--config.num_validation_patients=1 or more (and a new --config.name) to get "
                  "one, or pass --config.train.eval_every_steps=0 to train without it.")

    patch_pixels = tcfg.patch_size_px ** 2
    schedule = train_lib.PatchSchedule(steps_per_epoch, int(tcfg.batch_size), num_slices,
                                       int(tcfg.patches_per_slice), int(tcfg.patch_size_px),
                                       bool(tcfg.augment))
    keys = (k_order, k_patch, k_step)
    per_dispatch = steps_per_dispatch(config)
    images = replicate(images, replicated)
    orders: dict[int, jax.Array] = {}  # the current epoch's slice order, computed once

    def epoch_order(step: int) -> jax.Array:
        epoch = step // steps_per_epoch
        if epoch not in orders:
            orders.clear()
            orders[epoch] = schedule.order(k_order, epoch)
        return orders[epoch]

    if per_dispatch > 1:
        # Several steps per dispatch, each cutting its patches on the device.
        multi_step = train_lib.make_multi_step(
            method, optimizer, schedule, batch_sharding if mesh.size > 1 else None,
            out_shardings=(replicated, replicated))

        def advance(state, first, stop):
            return multi_step(state, images, keys, epoch_order(first), jnp.int32(first),
                              jnp.int32(stop - first))
    else:
        # One dispatch per step plus one that cuts its batch (laid out over the devices; on
        # several processes each holds its rows of the same global batch).
        cut = train_lib.make_batch_cutter(schedule, out_shardings=(batch_sharding, replicated))
        train_step = train_lib.make_train_step(method, optimizer,
                                               out_shardings=(replicated, replicated))

        def advance(state, first, stop):
            for step in range(first, stop):
                batch, step_key = cut(images, epoch_order(step), keys, step)
                state, step_metrics = train_step(state, batch, step_key)
            return state, step_metrics

    checkpoint_bytes = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
    logger = _Logger(workdir, bool(tcfg.get("tensorboard", True)), enabled=pid == 0)
    exit_at = int(os.environ.get(CRASH_AFTER_STEP, "0") or 0)
    bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
               disable=pid != 0 or not tcfg.get("progress", True), desc=method.kind)
    intervals = [int(tcfg.log_every_steps), int(tcfg.checkpoint_every_steps)]
    if validator is not None:
        intervals.append(validator.every)
    t_last, s_last = time.perf_counter(), start
    step = start
    while step < total_steps:
        # Run up to the next step at which the host has something to do.
        stop = min([total_steps, step + per_dispatch] + [(step // n + 1) * n for n in intervals
                                                         if n > 0]
                   + ([exit_at] if exit_at > step else []))
        state, step_metrics = advance(state, step, stop)
        bar.update(stop - step)
        step = done = stop
        epoch, i = divmod(done - 1, steps_per_epoch)
        validate = validator is not None and validator.due(done, total_steps)
        if done % tcfg.log_every_steps == 0 or done % tcfg.checkpoint_every_steps == 0 \
                or done == total_steps or validate:
            host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            try:
                train_lib.check_finite(host, done, mngr.latest_step())
            except FloatingPointError:
                mngr.wait_until_finished()  # no half-written checkpoint left behind
                mngr.close()
                raise
            now = time.perf_counter()
            rate = (done - s_last) * tcfg.batch_size / max(now - t_last, 1e-9)
            t_last, s_last = now, done
            logger.write(done, {**host, "epoch": epoch + (i + 1) / steps_per_epoch,
                                "patches_per_s": rate})
            postfix = {"epoch": f"{epoch + 1}", "loss": f"{host['total']:.4g}",
                       "patches_s": f"{rate:.0f}"}
            stop_early = False
            if validator is not None:
                validator.train_fit.append(host[method.kind] / patch_pixels)
                if validate:
                    train_fit = float(np.mean(validator.train_fit))
                    validator.train_fit = []
                    scalars, warning = validator.update(done, state.params, train_fit)
                    logger.write(done, scalars)
                    if warning and pid == 0:
                        tqdm.write(f"Warning: {warning}")
                    stop_early = validator.should_stop()
                if validator.best_step is not None:
                    postfix.update(val=f"{validator.best_loss:.4g}@{validator.best_step}")
            bar.set_postfix(postfix)
            if done % tcfg.checkpoint_every_steps == 0 or done == total_steps or stop_early:
                _ensure_checkpoint_space(mngr, workdir, done, checkpoint_bytes)
                wd.save_state(mngr, done, state)
            if stop_early:
                if pid == 0:
                    wd.atomic_write(workdir / EARLY_STOP_FILE, json.dumps(
                        {"step": done, "best_step": validator.best_step,
                         "patience_evaluations": validator.patience}))
                    tqdm.write(f"Early stop at step {done}: no better validation loss for "
                               f"{validator.patience} evaluations (best: step "
                               f"{validator.best_step}).")
                break
        if exit_at and done == exit_at:
            os._exit(CRASH_EXIT_STATUS)  # a crash between steps (tests of exact resume)
    bar.close()
    if nproc > 1:  # each process says where it stopped: they must agree
        print(f"{workdir}: trained to step {step}{who}.", flush=True)
    logger.close()
    mngr.wait_until_finished()
    mngr.close()
    if validator is not None:
        validator.close()
    return state, method


def _ensure_checkpoint_space(mngr: ocp.CheckpointManager, workdir: Path, step: int,
                             checkpoint_bytes: int) -> None:
    """Stops the run with one message, before a checkpoint is started on a file system that
    cannot hold it (orbax would fail half-way, from its writer threads), keeping the last
    complete checkpoint. The margin covers orbax's metadata and the best checkpoint."""
    try:
        outputs.ensure_space(workdir, int(checkpoint_bytes * 1.5) + (1 << 20),
                             f"The checkpoint of step {step} in {workdir}")
    except OutputUnwritableError as err:
        mngr.wait_until_finished()
        last = mngr.latest_step()
        mngr.close()
        kept = (f" The last complete checkpoint, step {last}, is kept: the run resumes from it."
                if last is not None else " No checkpoint was written yet.")
        raise OutputUnwritableError(f"{err}{kept}") from None


def replicate(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays, identical in every process, as arrays replicated over ``sharding``'s mesh."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), tree)
