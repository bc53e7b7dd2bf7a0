"""Train state, the jit-compiled train step for the paper's three training schemes, and `denoise`.

Schemes (``loss.kind``):
  * ``noise2clean`` (Eq. 1): one network, input ``batch[loss.noise2clean_input]`` (CT: the
    quarter-dose FBP of all views, ``x_est``), target ``batch["x_ref"]`` (CT: full-dose FBP).
  * ``noise2noise`` (Eq. 2): one network, ``x1 -> x2``.
  * ``consensus`` (Eq. 12): two networks, ``Ln + beta_w Lw + beta_r Lr``.
  * ``distill`` (the paper's Discussion): one network g from one reconstructed image
    (``loss.distill_input``, default ``x_est``: CT quarter-dose FBP, MRI SENSE) to the frozen
    output z = (f1(x1) + f2(x2)) / 2 of a trained consensus run (``loss.teacher``, its workdir),
    so that the proposed method runs where only reconstructed images exist. The teacher's
    outputs are computed once on whole slices (``batch["x_teacher"]``, ``experiment.fit``).

Both networks of the consensus pair live in one params pytree and one optimizer state, so one
jitted step updates both. Two layouts exist (``model.param_layout``): ``"separate"``
(``{"net1": ..., "net2": ...}``, two applies) and ``"stacked"`` (each leaf stacked on a leading
axis of size 2 and the network ``vmap``ped). ``"separate"`` is the default on every platform: on
XLA CPU the vmapped (grouped) convolutions are several times slower (see bench/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from consensus_jax import losses, patches
from consensus_jax.errors import ConfigError, TrainingDiverged
from consensus_jax.models import UNet, UNetConfig, apply_padded, init_params
from consensus_jax.xla_options import default_compiler_options

Array = jax.Array
Batch = Mapping[str, Array]

LOSS_KINDS = ("noise2clean", "noise2noise", "consensus", "distill")
#: The batch key holding a distilled network's target, the teacher pair's output.
TEACHER_KEY = "x_teacher"
PARAM_LAYOUTS = ("separate", "stacked")


@dataclasses.dataclass(frozen=True)
class Method:
    """What is trained: the scheme, the network and how the pair's parameters are laid out.

    Attributes:
      kind: one of ``LOSS_KINDS``.
      model: architecture of each network.
      param_layout: ``"separate"`` or ``"stacked"`` (consensus only; single networks ignore it).
      beta_w: weight of Eq. 10 (explicit L2 weight decay inside the loss, not AdamW).
      beta_r: weight of Eq. 11 (image consistency against ``x_est``); consensus only.
      noise2clean_input: batch key fed to the noise2clean network.
      distill_input: batch key fed to the distilled network.
      teacher: the workdir of the trained consensus run a ``distill`` network learns from.
    """

    kind: str
    model: UNetConfig
    param_layout: str = "separate"
    beta_w: float = 0.0
    beta_r: float = 0.0
    noise2clean_input: str = "x_est"
    distill_input: str = "x_est"
    teacher: str = ""

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"loss.kind must be one of {LOSS_KINDS}, got {self.kind!r}.")
        if self.param_layout not in PARAM_LAYOUTS:
            raise ConfigError(
                f"model.param_layout must be one of {PARAM_LAYOUTS}, got {self.param_layout!r}."
            )
        if not (np.isfinite(self.beta_w) and np.isfinite(self.beta_r)) or self.beta_w < 0 \
                or self.beta_r < 0:
            raise ConfigError(
                f"loss.beta_w and loss.beta_r must be >= 0, got {self.beta_w}, {self.beta_r}."
            )
        if self.kind == "distill" and not self.teacher:
            raise ConfigError("loss.kind='distill' needs loss.teacher: the workdir of a trained "
                              "consensus run, e.g. --config.loss.teacher=work_dirs/ct_quick/"
                              "consensus.")
        if self.kind != "consensus" and self.beta_r:
            raise ConfigError(
                f"loss.beta_r={self.beta_r} only applies to loss.kind='consensus' (Eq. 11 needs "
                f"z of Eq. 9); set loss.beta_r=0 for {self.kind!r}."
            )

    @property
    def num_networks(self) -> int:
        return 2 if self.kind == "consensus" else 1

    @property
    def stacked(self) -> bool:
        return self.kind == "consensus" and self.param_layout == "stacked"

    @property
    def image_input(self) -> str:
        """The batch key a single image-domain network reads (noise2clean, distill)."""
        return self.distill_input if self.kind == "distill" else self.noise2clean_input

    @property
    def target_key(self) -> str:
        """The batch key of a single image-domain network's target (noise2clean, distill)."""
        return TEACHER_KEY if self.kind == "distill" else "x_ref"

    def input_keys(self) -> tuple[str, ...]:
        """Batch keys the step reads."""
        if self.kind in ("noise2clean", "distill"):
            return (self.image_input, self.target_key)
        if self.kind == "noise2noise":
            return ("x1", "x2")
        return ("x1", "x2", "x_est") if self.beta_r else ("x1", "x2")

    @classmethod
    def from_config(cls, config: Any) -> Method:
        """Builds the method from a ConfigDict with ``model`` and ``loss`` groups."""
        model = dict(config.model)
        layout = model.pop("param_layout", "separate")
        return cls(
            kind=config.loss.kind,
            model=UNetConfig.from_mapping(model),
            param_layout=layout,
            beta_w=float(config.loss.beta_w),
            beta_r=float(config.loss.beta_r),
            noise2clean_input=config.loss.get("noise2clean_input", "x_est"),
            distill_input=config.loss.get("distill_input", "x_est"),
            teacher=str(config.loss.get("teacher", "") or ""),
        )


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training; a pytree of arrays only (orbax-friendly).

    ``params`` is ``{"net1": ...}`` for a single network, ``{"net1": ..., "net2": ...}`` for the
    separate consensus layout and ``{"stacked": ...}`` (leaves with a leading axis of 2) for the
    stacked layout.
    """

    step: Array
    params: Any
    opt_state: Any


def init_network_params(method: Method, key: Array) -> dict[str, Any]:
    """Independent initialisations of the method's network(s)."""
    keys = jax.random.split(key, method.num_networks)
    nets = [init_params(method.model, k) for k in keys]
    if method.stacked:
        return {"stacked": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *nets)}
    return {f"net{i + 1}": p for i, p in enumerate(nets)}


def split_params(method: Method, params: dict[str, Any]) -> list[Any]:
    """The per-network parameter pytrees [Theta1(, Theta2)] whatever the layout."""
    if "stacked" in params:
        return [jax.tree_util.tree_map(lambda x, i=i: x[i], params["stacked"]) for i in range(2)]
    return [params[f"net{i + 1}"] for i in range(method.num_networks)]


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
    params = init_network_params(method, key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def _apply(model: UNet, params: Any, x: Array) -> Array:
    return model.apply({"params": params}, x)


def apply_networks(method: Method, params: dict[str, Any], inputs: list[Array]) -> list[Array]:
    """[f1(inputs[0]), f2(inputs[1])] (or [f(inputs[0])]) on sizes divisible by 2**depth."""
    model = UNet(method.model)
    if "stacked" in params:
        out = jax.vmap(partial(_apply, model))(params["stacked"], jnp.stack(inputs))
        return [out[0], out[1]]
    return [_apply(model, params[f"net{i + 1}"], x) for i, x in enumerate(inputs)]


def loss_fn(method: Method, params: dict[str, Any], batch: Batch) -> tuple[Array, dict]:
    """The training objective of ``method.kind`` and every one of its terms (consensus: Eq. 12
    through ``losses.total_loss``; single networks: Eq. 1 or Eq. 2, plus ``beta_w`` Eq. 10)."""
    if method.kind == "consensus":
        y1, y2 = apply_networks(method, params, [batch["x1"], batch["x2"]])
        nets = split_params(method, params) if method.beta_w else None
        return losses.total_loss(y1, y2, batch["x1"], batch["x2"], batch.get("x_est"), nets,
                                 method.beta_w, method.beta_r)
    if method.kind in ("noise2clean", "distill"):
        (y,) = apply_networks(method, params, [batch[method.image_input]])
        loss, terms = losses.noise2clean(y, batch[method.target_key])
        terms = {method.kind: loss}
    else:
        (y,) = apply_networks(method, params, [batch["x1"]])
        loss, terms = losses.noise2noise(y, batch["x2"])
    if method.beta_w:
        lw, _ = losses.weight_decay(*split_params(method, params))
        loss = loss + method.beta_w * lw
        terms["weight_decay"] = lw
    terms["total"] = loss
    return loss, terms


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
        grad_fn = jax.value_and_grad(partial(loss_fn, method), has_aux=True)
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


def denoise(method: Method, params: dict[str, Any], x1: Array, x2: Array | None = None,
            average_halves: bool = False) -> Array:
    """Denoises whole images of any size (padded to 2**depth and cropped back).

    * consensus: ``z = (f1(x1) + f2(x2)) / 2`` (Eq. 9).
    * single network: ``f(x1)``; with ``average_halves=True``, ``(f(x1) + f(x2)) / 2`` (the
      "Noise2noise applied to both halves" column).

    Args:
      x1, x2: [B, H, W, C] (x2 unused for a single network unless ``average_halves``).
    Returns:
      [B, H, W, C] float32.
    """
    model = UNet(method.model)
    apply_fn = partial(_apply, model)
    m = method.model.size_multiple
    nets = split_params(method, params)
    if method.kind == "consensus":
        if x2 is None:
            raise ValueError("consensus denoising needs both halves x1 and x2 (Eq. 9).")
        return losses.consensus_average(apply_padded(apply_fn, nets[0], x1, m),
                                        apply_padded(apply_fn, nets[1], x2, m))
    y = apply_padded(apply_fn, nets[0], x1, m)
    if average_halves:
        if x2 is None:
            raise ValueError("average_halves=True needs x2.")
        y = losses.consensus_average(y, apply_padded(apply_fn, nets[0], x2, m))
    return y


def validation_terms(method: Method, params: dict[str, Any], batch: Batch
                     ) -> tuple[dict[str, Array], Array]:
    """The method's own training loss on whole held-out slices, and the denoised images.

    The loss needs no clean image except for noise2clean, whose training needs one anyway:
      * consensus: ``Ln`` of Eq. 8 (without Lw and Lr). On slices the networks never saw, the
        cross terms of Eq. 8 have zero mean when n2 is zero-mean given x + n1, so this estimates
        the clean consensus error of Eq. 7 plus a constant (docs/validation.md);
      * noise2noise: Eq. 2 in both directions, ``(||f(x1) - x2||^2 + ||f(x2) - x1||^2) / 2``;
      * noise2clean: Eq. 1 from the configured input to ``x_ref``;
      * distill: the same squared error to the teacher pair's output.
    Also ``disagreement`` (``||y1 - y2||^2``; consensus and noise2noise) and, where the batch has
    ``x_clean``, ``clean_error`` = ``||z - x_clean||^2`` (Eq. 7 for the pair): an oracle, never
    used for selection. Every value is a batch mean of per-image sums, like the training terms.

    Args:
      batch: whole slices [B, H, W, C] of any size (padded to 2**depth and cropped back).
    Returns:
      (terms, z) with z [B, H, W, C] the denoised images (noise2noise: both halves averaged).
    """
    model = UNet(method.model)
    apply_fn = partial(_apply, model)
    m = method.model.size_multiple
    nets = split_params(method, params)
    if method.kind in ("noise2clean", "distill"):
        z = apply_padded(apply_fn, nets[0], batch[method.image_input], m)
        loss, _ = losses.noise2clean(z, batch[method.target_key])
        terms = {"loss": loss}
    else:
        second = nets[1] if method.kind == "consensus" else nets[0]
        y1 = apply_padded(apply_fn, nets[0], batch["x1"], m)
        y2 = apply_padded(apply_fn, second, batch["x2"], m)
        if method.kind == "consensus":
            loss, t = losses.consensus_loss(y1, y2, batch["x1"], batch["x2"])
            disagreement = t["disagreement"]
        else:
            loss = 0.5 * (losses.noise2noise(y1, batch["x2"])[0]
                          + losses.noise2noise(y2, batch["x1"])[0])
            disagreement = jnp.mean(losses.squared_norm(y1 - y2))
        terms = {"loss": loss, "disagreement": disagreement}
        z = losses.consensus_average(y1, y2)
    if "x_clean" in batch:
        terms["clean_error"] = jnp.mean(losses.squared_norm(z - batch["x_clean"]))
    return terms, z


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
