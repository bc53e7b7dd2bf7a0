"""What every training scheme declares, and the network plumbing the schemes share.

A scheme is a frozen dataclass subclassing ``Method`` and registered under its ``loss.kind``
(``@register``). It declares:

* ``input_keys()``: the dataset images its training step reads (``x1``..``xK`` are the K split
  reconstructions of a slice, ``x_est`` the estimate from all of the measurement, ``x_ref`` the
  reference);
* ``num_networks``: how many UNets it trains (one params pytree holds them all);
* ``loss(params, batch)``: its training objective and every term (the equations of
  ``consensus_jax.losses``), to which ``beta_w`` times Eq. 10 is added here;
* ``validation_terms(params, batch)``: its label-free validation loss on whole held-out slices
  (``"loss"``) and the denoised images;
* ``predict(params, images)``: the table columns it fills (``columns``), from whole slices;
* ``export_inputs`` and ``denoise(params, *images)``: what an exported model takes and does;
* ``spread``: ``spread(params, *images)``, the per-pixel disagreement of its networks on
  ``export_inputs`` (``consensus_jax.uncertainty``), or None for a scheme with one network;
* ``prepare(config, load_run)``: data it adds before training (the distillation teacher).

Training (``experiment``), evaluation, ``runs``, export and denoise ask the method; none of them
branches on the scheme's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax import losses
from consensus_jax.errors import ConfigError
from consensus_jax.models import UNet, UNetConfig, apply_padded, init_params

Array = jax.Array
Batch = Mapping[str, Array]
Terms = dict[str, Array]

PARAM_LAYOUTS = ("separate", "stacked")
#: kind -> scheme class, filled by ``register``.
REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes ``cls`` the scheme of ``loss.kind == cls.kind``."""
    REGISTRY[cls.kind] = cls
    return cls


def split_keys(num_splits: int) -> tuple[str, ...]:
    """The dataset keys of the K split reconstructions: ("x1", ..., "xK")."""
    return tuple(f"x{k + 1}" for k in range(num_splits))


def _apply(model: UNet, params: Any, x: Array) -> Array:
    return model.apply({"params": params}, x)


@dataclasses.dataclass(frozen=True)
class Method:
    """What is trained: the scheme (the subclass), the network and the loss settings.

    Attributes:
      model: architecture of each network.
      param_layout: ``"separate"`` (``{"net1": ..., "netK": ...}``) or ``"stacked"`` (leaves
        stacked on a leading axis, the network ``vmap``ped); schemes with one network ignore it.
      beta_w: weight of Eq. 10 (explicit L2 weight decay inside the loss, not AdamW).
      beta_r: weight of Eq. 11 (image consistency against ``x_est``); consensus only.
      noise2clean_input: the image a noise2clean network reads.
      distill_input: the image a distilled network reads.
      teacher: the workdir of the trained consensus run a distilled network learns from.
      num_splits: K, the number of independent parts each measurement is split into (2: the
        paper's odd/even halves).
    """

    kind: ClassVar[str] = ""
    #: Table columns the scheme fills (``predict``'s keys), in the tables' order.
    columns: ClassVar[tuple[str, ...]] = ()

    model: UNetConfig
    param_layout: str = "separate"
    beta_w: float = 0.0
    beta_r: float = 0.0
    noise2clean_input: str = "x_est"
    distill_input: str = "x_est"
    teacher: str = ""
    num_splits: int = 2

    def __post_init__(self) -> None:
        if self.param_layout not in PARAM_LAYOUTS:
            raise ConfigError(f"model.param_layout must be one of {PARAM_LAYOUTS}, got "
                              f"{self.param_layout!r}.")
        if not (np.isfinite(self.beta_w) and np.isfinite(self.beta_r)) or self.beta_w < 0 \
                or self.beta_r < 0:
            raise ConfigError(f"loss.beta_w and loss.beta_r must be >= 0, got {self.beta_w}, "
                              f"{self.beta_r}.")
        if isinstance(self.num_splits, bool) or not isinstance(self.num_splits, int) or \
                self.num_splits < 2:
            raise ConfigError(f"data.num_splits={self.num_splits!r}: must be an integer >= 2 "
                              "(the paper's odd/even halves: 2).")
        if self.beta_r and not self.uses_image_consistency:
            raise ConfigError(f"loss.beta_r={self.beta_r} only applies to loss.kind='consensus' "
                              f"(Eq. 11 needs z of Eq. 9); set loss.beta_r=0 for {self.kind!r}.")

    # --- what the scheme declares (subclasses override) ------------------------------------

    #: Whether Eq. 11 (``beta_r``) applies.
    uses_image_consistency: ClassVar[bool] = False

    @property
    def num_networks(self) -> int:
        return 1

    @property
    def fit_term(self) -> str:
        """The loss term logged as the training fit beside the validation loss."""
        return self.kind

    def input_keys(self) -> tuple[str, ...]:
        """Dataset images the training step reads."""
        raise NotImplementedError

    def data_loss(self, params: dict[str, Any], batch: Batch) -> tuple[Array, Terms]:
        """The scheme's objective without Eq. 10 (which ``loss`` adds)."""
        raise NotImplementedError

    def validation_terms(self, params: dict[str, Any], batch: Batch) -> tuple[Terms, Array]:
        """(terms with ``"loss"``, z [B, H, W, C]) on whole held-out slices of any size."""
        raise NotImplementedError

    def predict(self, params: dict[str, Any], images: Batch) -> dict[str, Array]:
        """{column: denoised whole slices [B, H, W, C]} for each of ``columns``."""
        return {self.columns[0]: self.denoise(params, *[images[k] for k in self.export_inputs])}

    def predict_slices(self, params: dict[str, Any], images: Mapping[str, np.ndarray],
                       batch_size: int = 4) -> dict[str, np.ndarray]:
        """``predict`` over whole slices [S, H, W, C] in batches of ``batch_size`` (NumPy in and
        out), from the images the scheme declares."""
        keys = dict.fromkeys((*self.export_inputs, *self.input_keys()))
        return map_slices(jax.jit(self.predict), params,
                          {k: images[k] for k in keys if k in images}, batch_size)

    def spread_slices(self, params: dict[str, Any], images: Mapping[str, np.ndarray],
                      batch_size: int = 4) -> np.ndarray | None:
        """``spread`` over whole slices [S, H, W, C] in batches (fed ``export_inputs`` as
        ``predict_slices`` feeds them), or None for a scheme without one."""
        if self.spread is None:
            return None
        fn = jax.jit(lambda p, batch: self.spread(p, *[batch[k] for k in self.export_inputs]))
        return map_slices(fn, params, {k: images[k] for k in self.export_inputs}, batch_size)

    @property
    def export_inputs(self) -> tuple[str, ...]:
        """The images, in order, that ``denoise`` (and an exported model) takes per slice."""
        raise NotImplementedError

    def denoise(self, params: dict[str, Any], *images: Array) -> Array:
        """The denoised image from ``export_inputs`` ([B, H, W, C] each, any size)."""
        raise NotImplementedError

    #: ``spread(params, *images) -> [B, H, W, C]``: the per-pixel spread of the scheme's
    #: networks on ``export_inputs`` (an uncertainty map free at inference), or None when the
    #: scheme has no such map (one network). Schemes with one override it with a method.
    spread: ClassVar[Callable[..., Array] | None] = None

    def denoise_and_spread(self, params: dict[str, Any], *images: Array) -> tuple[Array, Array]:
        """(``denoise``, ``spread``) of the same ``export_inputs``; a scheme overrides it to run
        its networks once for both."""
        if self.spread is None:
            raise ConfigError(f"loss.kind={self.kind!r} has one network, so no spread of "
                              "networks to give as an uncertainty map.")
        return self.denoise(params, *images), self.spread(params, *images)

    def describe_inputs(self, modality: str) -> str:
        """What ``export_inputs`` are, in words, for an exported model's manifest."""
        return ", ".join(self.export_inputs)

    def prepare(self, config: Any, load_run: Callable[[str], tuple[Method, Any, int, Any]]
                ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None:
        """A function adding what training needs beyond the dataset to a split's images (the
        distillation teacher's outputs), or None. Called once before training; ``load_run``
        (``runs.load_run``: workdir -> (method, params, step, config) of its best checkpoint)
        reads another run."""
        return None

    def data_keys(self) -> tuple[str, ...]:
        """Dataset images to load for training (before ``prepare``)."""
        return self.input_keys()

    # --- shared -----------------------------------------------------------------------------

    @property
    def stacked(self) -> bool:
        return self.num_networks > 1 and self.param_layout == "stacked"

    def loss(self, params: dict[str, Any], batch: Batch) -> tuple[Array, Terms]:
        """The training objective and every one of its terms (``terms["total"]``)."""
        loss, terms = self.data_loss(params, batch)
        if self.beta_w:
            lw, _ = losses.weight_decay(*self.split_params(params))
            loss = loss + self.beta_w * lw
            terms["weight_decay"] = lw
        terms["total"] = loss
        return loss, terms

    def init_params(self, key: Array) -> dict[str, Any]:
        """Independent initialisations of the scheme's network(s)."""
        keys = jax.random.split(key, self.num_networks)
        nets = [init_params(self.model, k) for k in keys]
        if self.stacked:
            return {"stacked": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *nets)}
        return {f"net{i + 1}": p for i, p in enumerate(nets)}

    def split_params(self, params: dict[str, Any]) -> list[Any]:
        """The per-network parameter pytrees [Theta1, ..., ThetaK] whatever the layout."""
        if "stacked" in params:
            n = jax.tree_util.tree_leaves(params["stacked"])[0].shape[0]
            return [jax.tree_util.tree_map(lambda x, i=i: x[i], params["stacked"])
                    for i in range(n)]
        return [params[f"net{i + 1}"] for i in range(self.num_networks)]

    def apply(self, params: dict[str, Any], inputs: list[Array]) -> list[Array]:
        """[f1(inputs[0]), ..., fK(inputs[K-1])] on sizes divisible by 2**depth (patches)."""
        model = UNet(self.model)
        if "stacked" in params:
            out = jax.vmap(partial(_apply, model))(params["stacked"], jnp.stack(inputs))
            return list(out)
        return [_apply(model, params[f"net{i + 1}"], x) for i, x in enumerate(inputs)]

    def apply_whole(self, net_params: Any, x: Array) -> Array:
        """One network on whole images of any size (padded to 2**depth and cropped back)."""
        return apply_padded(partial(_apply, UNet(self.model)), net_params, x,
                            self.model.size_multiple)


def map_slices(fn: Callable[[Any, dict[str, Array]], Any], params: Any,
               images: Mapping[str, np.ndarray], batch_size: int) -> Any:
    """``fn(params, batch)`` over whole slices [S, ...] in batches of ``batch_size``; the
    outputs (any pytree of arrays) concatenated along the slices, as NumPy."""
    num = next(iter(images.values())).shape[0]
    parts = [fn(params, {k: jnp.asarray(v[start:start + batch_size]) for k, v in images.items()})
             for start in range(0, num, batch_size)]
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)


def clean_error(z: Array, batch: Batch) -> dict[str, Array]:
    """``{"clean_error": ||z - x_clean||^2}`` when the batch has ``x_clean`` (an oracle that is
    logged, never used for selection)."""
    if "x_clean" not in batch:
        return {}
    return {"clean_error": jnp.mean(losses.squared_norm(z - batch["x_clean"]))}
