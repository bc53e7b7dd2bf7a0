"""Train state, the optimizer, the jit-compiled train step and its patch schedule.

What is trained is a ``consensus_jax.methods.Method`` (the scheme of ``loss.kind``: its
networks, loss, validation and prediction); this module turns any of them into one jitted step
that updates every network of the scheme at once: all networks live in one params pytree and one
optimizer state. Two layouts exist for several networks (``model.param_layout``):
``"separate"`` (``{"net1": ..., "net2": ...}``, one apply each) and ``"stacked"`` (each leaf
stacked on a leading axis and the network ``vmap``ped). ``"separate"`` is the default on every
platform: on XLA CPU the vmapped (grouped) convolutions are several times slower (see
bench/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from consensus_jax import patches
from consensus_jax.errors import ConfigError, TrainingDiverged
from consensus_jax.methods import Method
from consensus_jax.xla_options import default_compiler_options

Array = jax.Array
Batch = Mapping[str, Array]

class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training; a pytree of arrays only (orbax-friendly).

    ``params`` is ``{"net1": ...}`` for a single network, ``{"net1": ..., "net2": ...}`` for the
    separate consensus layout and ``{"stacked": ...}`` (leaves with a leading axis of 2) for the
    stacked layout.
    """

    step: Array
    params: Any
    opt_state: Any


SCHEDULES = ("constant", "cosine")


def make_optimizer(learning_rate: float, schedule: str = "constant",
                   total_steps: int | None = None) -> optax.GradientTransformation:
    """Adam (paper: 1e-4); weight decay is explicit in the loss (Eq. 10), not AdamW.

    ``schedule``: ``"constant"`` (the paper's) or ``"cosine"``, which decays the rate from
    ``learning_rate`` to 0 over ``total_steps`` (half-cosine). The two keep different optimizer
    states (a cosine schedule counts steps), so a run is restored with the schedule it was trained
    with.
    """
    if schedule == "constant":
        return optax.adam(learning_rate)
    if schedule == "cosine":
        if total_steps is None or total_steps < 1:
            raise ConfigError(f"optim.schedule='cosine' needs the run's total steps (>= 1), got "
                              f"{total_steps}.")
        return optax.adam(optax.cosine_decay_schedule(learning_rate, total_steps))
    raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}.")


def create_train_state(method: Method, optimizer: optax.GradientTransformation,
                       key: Array) -> TrainState:
    params = method.init_params(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def make_train_step(method: Method, optimizer: optax.GradientTransformation,
                    jit: bool = True, **jit_kwargs) -> Callable:
    """Returns ``train_step(state, batch, rng) -> (state, metrics)``, jitted with donation.

    ``rng`` is accepted for a uniform signature (the loss itself is deterministic). ``metrics``
    holds every loss term and the global gradient norm; nothing in the step syncs with the host.
    Unless ``jit_kwargs`` names ``compiler_options``, the step is compiled with
    ``xla_options.default_compiler_options()`` (on CPU: Eigen convolutions instead of YNNPACK,
    about 1.3x faster at the paper size); pass ``compiler_options={}`` for XLA's defaults.
    """

    def train_step(state: TrainState, batch: Batch, rng: Array) -> tuple[TrainState, dict]:
        del rng
        grad_fn = jax.value_and_grad(method.loss, has_aux=True)
        (_, terms), grads = grad_fn(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        terms["grad_norm"] = optax.tree.norm(grads)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), terms

    if not jit:
        return train_step
    jit_kwargs.setdefault("compiler_options", default_compiler_options())
    return jax.jit(train_step, donate_argnums=(0,), **jit_kwargs)


@dataclasses.dataclass(frozen=True)
class PatchSchedule:
    """Which patches step ``s`` trains on, a function of (seed, s) only (exact resume).

    Epoch ``e = s // steps_per_epoch`` visits every slice ``patches_per_slice`` times in the
    order ``patches.epoch_slice_order(fold_in(k_order, e))``; step ``s`` takes the next
    ``batch_size`` entries of it and cuts one patch from each at random locations drawn from
    ``fold_in(k_patch, s)``. The batch is the global one: on several processes each cuts the
    same batch and contributes its share (``experiment.fit``).
    """

    steps_per_epoch: int
    batch_size: int  # global
    num_slices: int
    patches_per_slice: int
    patch_size: int
    augment: bool = False

    def order(self, k_order: Array, epoch: Any) -> Array:
        """The slice order of ``epoch`` (one entry per patch of the epoch)."""
        return patches.epoch_slice_order(jax.random.fold_in(k_order, epoch), self.num_slices,
                                         self.patches_per_slice)

    def batch(self, images: Mapping[str, Array], k_order: Array, k_patch: Array, step: Any,
              order: Array | None = None) -> dict[str, Array]:
        """The patch batch of ``step`` (a Python int or a traced int32); ``order``: the step's
        epoch order when the caller already has it (else computed here)."""
        epoch, i = step // self.steps_per_epoch, step % self.steps_per_epoch
        if order is None:
            order = self.order(k_order, epoch)
        idx = jax.lax.dynamic_slice_in_dim(order, i * self.batch_size, self.batch_size)
        key = jax.random.fold_in(k_patch, step)
        return patches.random_patch_batch(key, images, idx, self.patch_size, self.augment)


def make_batch_cutter(schedule: PatchSchedule, **jit_kwargs) -> Callable:
    """Returns ``cut(images, order, keys, step) -> (batch, step_key)``, jitted: step ``step``'s
    patch batch as ``schedule`` prescribes (``order``: that step's epoch order) and the key of
    its train step, in one dispatch. ``keys`` = (k_order, k_patch, k_step).

    The one-step-per-dispatch loop calls it before the train step of ``make_train_step``: the
    same batches as ``make_multi_step``, cut without a host round trip. ``out_shardings`` lays
    the batch out over the devices.
    """
    def cut(images: Mapping[str, Array], order: Array, keys: tuple[Array, ...], step: Array
            ) -> tuple[dict[str, Array], Array]:
        k_order, k_patch, k_step = keys
        return (schedule.batch(images, k_order, k_patch, step, order=order),
                jax.random.fold_in(k_step, step))

    return jax.jit(cut, **jit_kwargs)


def make_multi_step(method: Method, optimizer: optax.GradientTransformation,
                    schedule: PatchSchedule, batch_sharding: Any = None,
                    **jit_kwargs) -> Callable:
    """Returns ``multi_step(state, images, keys, order, start, count) -> (state, metrics)``,
    jitted.

    Runs training steps ``start .. start + count - 1`` in one dispatch (a ``fori_loop`` with a
    traced trip count, so every ``count`` shares one compilation): each step cuts its patches
    from ``images`` (name -> [S, H, W, C], already on the device) as ``schedule`` prescribes and
    applies the train step of ``make_train_step``. The host only waits for the result when it
    reads ``metrics``, the loss terms of the last step. ``keys`` = (k_order, k_patch, k_step).
    ``order``: the slice order of ``start``'s epoch (``schedule.order``), computed once per
    epoch by the caller; a step in a later epoch computes its own.
    ``batch_sharding``: constrains each batch (the data-parallel axis) on a multi-device mesh.
    """
    step_fn = make_train_step(method, optimizer, jit=False)

    def one_step(state: TrainState, images: Mapping[str, Array], keys: tuple[Array, ...],
                 order: Array, step: Array) -> tuple[TrainState, dict]:
        k_order, k_patch, k_step = keys
        batch = schedule.batch(images, k_order, k_patch, step, order=order)
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return step_fn(state, batch, jax.random.fold_in(k_step, step))

    def multi_step(state: TrainState, images: Mapping[str, Array], keys: tuple[Array, ...],
                   order: Array, start: Array, count: Array) -> tuple[TrainState, dict]:
        shapes = jax.eval_shape(one_step, state, images, keys, order, start)[1]
        metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        first_epoch = start // schedule.steps_per_epoch

        def body(j: Array, carry: tuple[TrainState, dict]) -> tuple[TrainState, dict]:
            step = start + j
            epoch = step // schedule.steps_per_epoch
            step_order = jax.lax.cond(epoch == first_epoch, lambda: order,
                                      lambda: schedule.order(keys[0], epoch))
            return one_step(carry[0], images, keys, step_order, step)

        return jax.lax.fori_loop(0, count, body, (state, metrics))

    jit_kwargs.setdefault("compiler_options", default_compiler_options())
    return jax.jit(multi_step, donate_argnums=(0,), **jit_kwargs)


def make_mesh(local: bool = False) -> Mesh:
    """A 1-D mesh over every device of every process, axis "data" (the batch is sharded over it,
    the parameters replicated); ``local``: over this process's devices only (evaluation, which
    each process of a multi-process run does on its own)."""
    return Mesh(np.asarray(jax.local_devices() if local else jax.devices()), ("data",))


def check_finite(metrics: Mapping[str, Any], step: int, last_checkpoint: int | None = None
                 ) -> None:
    """Raises FloatingPointError naming the first non-finite loss term (host-side check) and
    the checkpoint that is kept (``last_checkpoint``: its step, None when there is none)."""
    for name, value in metrics.items():
        if not jnp.isfinite(value):
            kept = (f"the checkpoint of step {last_checkpoint} is kept and a rerun resumes from "
                    "it" if last_checkpoint else "no checkpoint had been saved yet")
            raise TrainingDiverged(
                f"Loss term {name!r} is {float(value)} at step {step}. Lower optim.learning_rate "
                f"or check the input data for NaN/inf; {kept}.")
