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

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from consensus_jax import features, input_pipeline, methods, metrics, outputs, runs, train_lib
from consensus_jax import workdir as wd
from consensus_jax.errors import ConfigError, OutputUnwritableError
from consensus_jax.mri.heldout import heldout_kspace_error

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


class _Validator:
    """Label-free validation on whole held-out slices, the best checkpoint, and the guards.

    Every ``train.eval_every_steps`` the method's own loss (``method.validation_terms``) is
    computed on the validation split. The checkpoint with the lowest validation loss so far is
    kept in ``<workdir>/best`` (orbax, best_fn over the stored metrics, one kept), beside the
    latest ones in ``checkpoints/`` that resume uses. The oracle scores against the reference are
    logged under ``oracle/`` and never used for a decision.

    When the split holds measured k-space lines that no network saw (MRI validation slices,
    ``features.MRI_HELDOUT_KEYS``), the validation loss is instead the error of the method's
    prediction ``z`` on those lines (``mri.heldout.heldout_kspace_error``, mean over slices),
    whatever the scheme; the method's own loss is logged as ``consensus_loss_diagnostic``.
    """

    def __init__(self, config: ml_collections.ConfigDict, method: methods.Method,
                 workdir: Path, images: dict[str, np.ndarray], replicated: NamedSharding):
        self.method, self.modality = method, config.modality
        self.every = int(config.train.eval_every_steps)
        self.patience = int(config.train.early_stop_patience)
        self.warn_after = int(config.train.overfit_warning_evals)
        self.batch_size = int(config.eval.batch_size)
        self.kspace = "heldout_kspace" in images
        heldout = (*features.MRI_HELDOUT_KEYS, "heldout_valid") if self.kspace else ()
        keys = [k for k in (*method.input_keys(), *method.export_inputs, "x_ref", "x_clean",
                            *heldout) if k in images]
        # Whole slices in every process, on the devices of the mesh.
        self.images = replicate({k: images[k] for k in dict.fromkeys(keys)}, replicated)
        self.pixels = int(np.prod(images["x_ref"].shape[1:3]))
        self.step_fn = jax.jit(method.validation_terms)
        self.kspace_fn = jax.jit(heldout_kspace_error)
        self.best = wd.best_manager(workdir)
        step = self.best.best_step()
        self.best_step = step
        self.best_loss = float(self.best.metrics(step)["val_loss"]) if step is not None \
            else float("inf")
        self.history: list[tuple[float, float]] = []  # (validation loss, training fit term)
        self.train_fit: list[float] = []
        self.since_best = 0

    def evaluate(self, params: Any) -> dict[str, float]:
        sums: dict[str, float] = {}
        num = self.images["x_ref"].shape[0]
        for start in range(0, num, self.batch_size):
            batch = {k: v[start:start + self.batch_size] for k, v in self.images.items()}
            terms, z = self.step_fn(params, batch)
            b = z.shape[0]
            if self.kspace:
                terms = {**terms, "consensus_loss_diagnostic": terms["loss"],
                         "loss": jnp.mean(self.kspace_fn(
                             z, batch["maps"], batch["heldout_lines"], batch["heldout_kspace"],
                             batch["heldout_valid"]))}
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
        if train_fit is not None:  # both per pixel of the method's own (image) loss
            image_loss = vals.get("consensus_loss_diagnostic", loss)
            scalars["gap_per_px"] = train_fit - image_loss / self.pixels
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
    written (the loss settings are checked by the method, ``consensus_jax.methods``)."""
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


@dataclasses.dataclass
class Run:
    """What ``setup`` prepares before the first step of ``fit``.

    ``images``: the training split's whole slices (the method's input keys), host arrays;
    ``keys``: (k_init, k_order, k_patch, k_step) from the config's seed.
    """

    config: ml_collections.ConfigDict
    workdir: Path
    method: methods.Method
    optimizer: optax.GradientTransformation
    schedule: train_lib.PatchSchedule
    total_steps: int
    images: dict[str, np.ndarray]
    keys: tuple[jax.Array, ...]
    mesh: Mesh
    prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None
    config_changed: bool

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))


def setup(config: ml_collections.ConfigDict, workdir: Path, allow_config_change: bool) -> Run:
    """Checks the config and the workdir, loads the training split and builds the schedule and
    the optimizer; writes nothing."""
    check_config(config)
    outputs.check_writable(workdir / "config.json", "--workdir")
    method = methods.from_config(config)
    tcfg = config.train
    # Checked now, stored only once the run has started: a run that fails to start (a bad
    # value, a shape that does not fit the checkpoint) leaves the workdir as it was.
    config_changed = wd.check_workdir_config(workdir, config, allow_config_change, write=False)
    mesh = train_lib.make_mesh()
    if tcfg.batch_size % mesh.size:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} must be divisible by the number of "
                          f"devices ({mesh.size}).")
    prepare = method.prepare(config, runs.load_run)  # e.g. the distillation teacher's outputs
    images = input_pipeline.load_split(config.data, config.data.train_split, config.modality,
                                       keys=method.data_keys())
    if prepare is not None:
        images = prepare(images)
    images = {k: images[k] for k in method.input_keys()}
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
    schedule = train_lib.PatchSchedule(steps_per_epoch, int(tcfg.batch_size), num_slices,
                                       int(tcfg.patches_per_slice), int(tcfg.patch_size_px),
                                       bool(tcfg.augment))
    keys = tuple(jax.random.split(jax.random.PRNGKey(config.seed), 4))
    return Run(config, workdir, method, optimizer, schedule, total_steps, images, keys, mesh,
               prepare, config_changed)


def restore(run: Run) -> tuple[train_lib.TrainState, int, ocp.CheckpointManager]:
    """(state, its step, the checkpoint manager): the newest intact checkpoint of the workdir,
    or a fresh state at step 0."""
    state = jax.device_put(train_lib.create_train_state(run.method, run.optimizer, run.keys[0]),
                           run.replicated)
    mngr = wd.checkpoint_manager(run.workdir, run.config.train.keep_checkpoints)
    start = 0
    if mngr.all_steps():
        state, start = wd.restore_latest_intact(run.workdir / wd.CHECKPOINTS, mngr.all_steps(),
                                                state)
        mngr.reload()  # a damaged step moved aside is no longer listed
    return state, start, mngr


def make_validator(run: Run) -> _Validator | None:
    """The validator of the run's validation split, or None (no evaluations asked for, or a
    dataset without the split, which is said once)."""
    config = run.config
    split = config.data.validation_split
    if int(config.train.eval_every_steps) <= 0:
        return None
    if input_pipeline.has_split(config.data, split):
        images = input_pipeline.load_split(config.data, split, config.modality)
        if run.prepare is not None:
            images = run.prepare(images)
        return _Validator(config, run.method, run.workdir, images, run.replicated)
    if jax.process_index() == 0:
        built_with = input_pipeline.dataset_metadata(config.data).get("num_validation_patients")
        why = ("it was built with --config.num_validation_patients=0" if built_with == 0
               else "it was built before validation splits existed")
        print(f"Note: the dataset {config.data.name}/{config.data.config} has no {split!r} split "
              f"({why}): training without validation, best-checkpoint selection or early "
              "stopping. Rebuild it with data_prep and --config.num_validation_patients=1 or "
              "more (and a new --config.name) to get one, or pass "
              "--config.train.eval_every_steps=0 to train without it.")
    return None


def make_advance(run: Run) -> Callable[[train_lib.TrainState, int, int],
                                       tuple[train_lib.TrainState, dict]]:
    """``advance(state, first, stop) -> (state, metrics of step stop - 1)``: trains steps
    ``first .. stop - 1``, in ``train.steps_per_dispatch`` steps per dispatch."""
    _, k_order, k_patch, k_step = run.keys
    keys, schedule = (k_order, k_patch, k_step), run.schedule
    images = replicate(run.images, run.replicated)
    orders: dict[int, jax.Array] = {}  # the current epoch's slice order, computed once

    def epoch_order(step: int) -> jax.Array:
        epoch = step // schedule.steps_per_epoch
        if epoch not in orders:
            orders.clear()
            orders[epoch] = schedule.order(k_order, epoch)
        return orders[epoch]

    if steps_per_dispatch(run.config) > 1:
        # Several steps per dispatch, each cutting its patches on the device.
        multi_step = train_lib.make_multi_step(
            run.method, run.optimizer, schedule,
            run.batch_sharding if run.mesh.size > 1 else None,
            out_shardings=(run.replicated, run.replicated))

        def advance(state, first, stop):
            return multi_step(state, images, keys, epoch_order(first), jnp.int32(first),
                              jnp.int32(stop - first))
        return advance
    # One dispatch per step plus one that cuts its batch (laid out over the devices; on several
    # processes each holds its rows of the same global batch).
    cut = train_lib.make_batch_cutter(schedule, out_shardings=(run.batch_sharding,
                                                               run.replicated))
    train_step = train_lib.make_train_step(run.method, run.optimizer,
                                           out_shardings=(run.replicated, run.replicated))

    def advance(state, first, stop):
        for step in range(first, stop):
            batch, step_key = cut(images, epoch_order(step), keys, step)
            state, step_metrics = train_step(state, batch, step_key)
        return state, step_metrics
    return advance


class Hook:
    """Something the loop does between steps: after every step that is a multiple of
    ``every`` (0: none), after step ``at`` (None: none) and after the run's last step.
    ``needs_metrics``: the loop fetches (and checks, and logs) the step's metrics first."""

    every: int = 0
    at: int | None = None
    needs_metrics: bool = True

    def due(self, step: int, last: int, stopping: bool = False) -> bool:
        """Whether the hook runs after ``step`` (``last``: the run's last step; ``stopping``:
        a hook asked the run to stop at this step)."""
        return bool(self.every and step % self.every == 0) or step == self.at or step == last

    def next_step(self, step: int) -> int | None:
        """The first step after ``step`` at which this hook is due (the last one aside)."""
        candidates = [(step // self.every + 1) * self.every] if self.every else []
        candidates += [self.at] if self.at is not None and self.at > step else []
        return min(candidates, default=None)

    def __call__(self, loop: Loop, step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called once when the loop ends normally."""


class _Validate(Hook):
    """Validation, the best checkpoint and early stopping (``_Validator``)."""

    def __init__(self, validator: _Validator):
        self.validator, self.every = validator, validator.every

    def __call__(self, loop: Loop, step: int) -> None:
        v = self.validator
        train_fit = float(np.mean(loop.fits))
        loop.fits = []
        scalars, warning = v.update(step, loop.state.params, train_fit)
        loop.logger.write(step, scalars)
        if warning and loop.pid == 0:
            tqdm.write(f"Warning: {warning}")
        if v.best_step is not None:
            loop.bar.set_postfix({**loop.postfix, "val": f"{v.best_loss:.4g}@{v.best_step}"})
        if v.should_stop():
            loop.request_stop({"step": step, "best_step": v.best_step,
                               "patience_evaluations": v.patience},
                              f"Early stop at step {step}: no better validation loss for "
                              f"{v.patience} evaluations (best: step {v.best_step}).")

    def close(self) -> None:
        self.validator.close()


class _Checkpoint(Hook):
    """The latest checkpoints (orbax, asynchronous), also when the run stops early."""

    def __init__(self, mngr: ocp.CheckpointManager, every: int, checkpoint_bytes: int):
        self.mngr, self.every, self.bytes = mngr, every, checkpoint_bytes

    def due(self, step: int, last: int, stopping: bool = False) -> bool:
        return stopping or super().due(step, last)

    def __call__(self, loop: Loop, step: int) -> None:
        _ensure_checkpoint_space(self.mngr, loop.run.workdir, step, self.bytes)
        wd.save_state(self.mngr, step, loop.state)


class Loop:
    """Runs the steps of ``run`` from ``start`` and hands control to its hooks between them.

    At every step where a hook is due (and every ``train.log_every_steps``), the step's metrics
    are fetched, checked for NaN (``TrainingDiverged``, keeping the checkpoints) and logged; then
    each due hook runs, in order. A hook may ``request_stop``; the run then saves its checkpoint
    and ends (early stopping).
    """

    def __init__(self, run: Run, state: train_lib.TrainState, start: int,
                 mngr: ocp.CheckpointManager, hooks: Sequence[Hook]):
        self.run, self.state, self.step, self.mngr, self.hooks = run, state, start, mngr, hooks
        tcfg = run.config.train
        self.pid = jax.process_index()
        self.log_every = int(tcfg.log_every_steps)
        self.logger = _Logger(run.workdir, bool(tcfg.get("tensorboard", True)),
                              enabled=self.pid == 0)
        self.bar = tqdm(total=run.total_steps, initial=start, unit="step", dynamic_ncols=True,
                        disable=self.pid != 0 or not tcfg.get("progress", True),
                        desc=run.method.kind)
        self.fits: list[float] = []  # training fit terms per pixel since the last validation
        self.postfix: dict[str, str] = {}
        self.stop_record: dict | None = None
        self._timer = (time.perf_counter(), start)

    def request_stop(self, record: dict, message: str) -> None:
        self.stop_record, self.stop_message = record, message

    def _next_stop(self, per_dispatch: int) -> int:
        """The next step at which the host has something to do."""
        step = self.step
        stops = [self.run.total_steps, step + per_dispatch, (step // self.log_every + 1)
                 * self.log_every]
        stops += [s for h in self.hooks if (s := h.next_step(step)) is not None]
        return min(stops)

    def _fetch_and_log(self, metrics: dict) -> None:
        run, done = self.run, self.step
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        try:
            train_lib.check_finite(host, done, self.mngr.latest_step())
        except FloatingPointError:
            self.mngr.wait_until_finished()  # no half-written checkpoint left behind
            self.mngr.close()
            raise
        now, (t_last, s_last) = time.perf_counter(), self._timer
        rate = (done - s_last) * run.config.train.batch_size / max(now - t_last, 1e-9)
        self._timer = (now, done)
        epoch, i = divmod(done - 1, run.schedule.steps_per_epoch)
        self.logger.write(done, {**host, "epoch": epoch + (i + 1) / run.schedule.steps_per_epoch,
                                 "patches_per_s": rate})
        self.postfix = {"epoch": f"{epoch + 1}", "loss": f"{host['total']:.4g}",
                        "patches_s": f"{rate:.0f}"}
        self.fits.append(host[run.method.fit_term] / run.config.train.patch_size_px ** 2)
        self.bar.set_postfix(self.postfix)

    def run_steps(self, advance: Callable) -> train_lib.TrainState:
        """Trains to the last step (or an early stop); returns the state."""
        per_dispatch, last = steps_per_dispatch(self.run.config), self.run.total_steps
        while self.step < last:
            stop = self._next_stop(per_dispatch)
            self.state, metrics = advance(self.state, self.step, stop)
            self.bar.update(stop - self.step)
            self.step = stop
            if stop % self.log_every == 0 or any(h.needs_metrics and h.due(stop, last)
                                                 for h in self.hooks):
                self._fetch_and_log(metrics)
            for hook in self.hooks:  # in order: a stop asked by one reaches the checkpoint
                if hook.due(stop, last, stopping=self.stop_record is not None):
                    hook(self, stop)
            if self.stop_record is not None:
                self._write_early_stop()
                break
        return self.state

    def _write_early_stop(self) -> None:
        if self.pid == 0:
            wd.atomic_write(self.run.workdir / EARLY_STOP_FILE, json.dumps(self.stop_record))
            tqdm.write(self.stop_message)

    def close(self) -> None:
        self.bar.close()
        self.logger.close()
        self.mngr.wait_until_finished()
        self.mngr.close()
        for hook in self.hooks:
            hook.close()


def fit(config: ml_collections.ConfigDict, workdir: str | Path, allow_config_change: bool = False,
        hooks: Sequence[Hook] = ()) -> tuple[train_lib.TrainState, methods.Method]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the state.

    A finished run (latest checkpoint at the final step, or stopped early) is returned as is,
    never retrained. ``hooks`` run after validation and checkpointing at the steps they are due.
    """
    workdir = Path(workdir)
    run = setup(config, workdir, allow_config_change)
    state, start, mngr = restore(run)
    pid, nproc = jax.process_index(), jax.process_count()
    stopped = workdir / EARLY_STOP_FILE
    if start >= run.total_steps or stopped.exists():
        why = f"stopped early at step {start}" if stopped.exists() else \
            f"already trained to step {start} of {run.total_steps}"
        if pid == 0:
            print(f"{workdir}: {why}; nothing to do.")
        mngr.close()
        return state, run.method
    if run.config_changed and pid == 0:
        wd.store_config(workdir, config, step=start)
    who = f" (process {pid} of {nproc})" if nproc > 1 else ""
    if start:
        tqdm.write(f"{workdir}: resuming from step {start}{who}.")
    validator = make_validator(run)
    advance = make_advance(run)
    checkpoint_bytes = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
    loop = Loop(run, state, start, mngr, [
        *([_Validate(validator)] if validator is not None else []),
        _Checkpoint(mngr, int(config.train.checkpoint_every_steps), checkpoint_bytes),
        *hooks])
    state = loop.run_steps(advance)
    if nproc > 1:  # each process says where it stopped: they must agree
        print(f"{workdir}: trained to step {loop.step}{who}.", flush=True)
    loop.close()
    return state, run.method


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
