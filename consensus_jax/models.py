"""The denoiser f(x; Theta) of the paper: a UNet in the style of FBPConvNet (refs [1], [9]).

Per level: two 3x3 convolutions with ReLU, then 2x2 max-pooling on the way down; a 2x2 transposed
convolution on the way up, concatenated with the skip connection and followed by two 3x3
convolutions with ReLU. A 1x1 convolution maps to the output channels and, by default, the input is
added back (global residual, as in FBPConvNet). There is no normalisation layer, so ``apply`` is a
pure function of ``(params, x)`` with no batch statistics.

``UNetConfig.layer_impl`` picks how the up-convolution and the pooling are computed, never what
they compute (same parameters, same outputs): ``"xla"`` uses flax's ``ConvTranspose`` and
``max_pool``; ``"reshape"`` computes the 2x2 stride-2 transposed convolution as one matrix product
followed by a depth-to-space reshape, and the 2x2 max-pooling as a max over a reshaped axis. XLA CPU
executes the input-dilated convolution behind ``ConvTranspose`` and the select-and-scatter behind
the pooling gradient with slow generic loops, so ``"auto"`` (the default) means ``"reshape"`` on CPU
and ``"xla"`` on GPU/TPU (see bench/PERF_LOG.md). The pooling gradients differ only where two
inputs of a window tie for the maximum (flax picks one, the reshape splits it); after ReLU, ties
happen among zeros, whose gradient through the ReLU is zero either way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LAYER_IMPLS = ("auto", "xla", "reshape")


def resolve_layer_impl(layer_impl: str, backend: str | None = None) -> str:
    """The concrete implementation ("xla" or "reshape") for ``layer_impl`` on ``backend``.

    ``"auto"`` is ``"reshape"`` on the CPU backend and ``"xla"`` elsewhere; ``backend`` defaults to
    ``jax.default_backend()``.
    """
    if layer_impl not in LAYER_IMPLS:
        raise ValueError(f"model.layer_impl must be one of {LAYER_IMPLS}, got {layer_impl!r}.")
    if layer_impl != "auto":
        return layer_impl
    return "reshape" if (backend or jax.default_backend()) == "cpu" else "xla"


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of f(x; Theta).

    Attributes:
      base_features: feature maps at the first level (paper: 32 for CT, 64 for MRI).
      depth: number of 2x2 pooling levels (paper setting: 4). Image sides must be multiples of
        ``2**depth`` for ``UNet.apply``; ``denoise`` pads other sizes.
      in_channels: 1 for CT (HU/1000), 2 for MRI (real, imaginary).
      out_channels: equal to ``in_channels`` when ``residual`` is on.
      residual: output = input + UNet(input).
      dtype: compute dtype name, "float32" (default) or "bfloat16"; parameters stay float32.
      layer_impl: how up-convolution and pooling are computed, one of ``LAYER_IMPLS``; every
        choice gives the same function of the same parameters (module docstring).
    """

    base_features: int = 32
    depth: int = 4
    in_channels: int = 1
    out_channels: int = 1
    residual: bool = True
    dtype: str = "float32"
    layer_impl: str = "auto"

    def __post_init__(self):
        if self.base_features < 1:
            raise ValueError(f"model.base_features must be >= 1, got {self.base_features}.")
        if self.depth < 0:
            raise ValueError(f"model.depth must be >= 0, got {self.depth}.")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(
                f"model.in_channels/out_channels must be >= 1, got "
                f"{self.in_channels}/{self.out_channels}."
            )
        if self.residual and self.in_channels != self.out_channels:
            raise ValueError(
                f"model.residual=True needs in_channels == out_channels, got "
                f"{self.in_channels} and {self.out_channels}; set model.residual=False or make "
                "them equal."
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}.")
        resolve_layer_impl(self.layer_impl, backend="cpu")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> UNetConfig:
        """Builds the frozen config from a ConfigDict/dict, rejecting unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(
                f"Unknown model config keys {unknown}; valid keys are {sorted(names)}."
            )
        return cls(**{k: cfg[k] for k in cfg})

    @property
    def size_multiple(self) -> int:
        return 2**self.depth


class _DoubleConv(nn.Module):
    features: int
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i in range(2):
            x = nn.Conv(
                self.features, (3, 3), padding="SAME", dtype=self.dtype,
                param_dtype=jnp.float32, name=f"conv{i}",
            )(x)
            x = nn.relu(x)
        return x


class _UpConvGemm(nn.Module):
    """``nn.ConvTranspose(features, (2, 2), strides=(2, 2))`` as one GEMM + depth-to-space.

    Same parameters (``kernel`` [2, 2, in, features], ``bias`` [features], same initialisers) and
    the same output: flax's transposed convolution (``transpose_kernel=False``) writes
    ``x[i, j] @ kernel[1 - a, 1 - b]`` to output pixel ``(2i + a, 2j + b)``.
    """

    features: int
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, cin = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, cin, self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        k = kernel[::-1, ::-1].astype(self.dtype)
        y = jnp.einsum("bhwc,xycf->bhxwyf", x.astype(self.dtype), k)
        return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


def _max_pool_2x2(x: Array) -> Array:
    """2x2 max-pooling, stride 2, as a max over reshaped axes: [B, H, W, C] -> [B, H/2, W/2, C]."""
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class UNet(nn.Module):
    """UNet f(x; Theta): [B, H, W, in_channels] -> [B, H, W, out_channels], float32 output."""

    config: UNetConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"UNet expects [B, H, W, {cfg.in_channels}] input, got shape {x.shape}."
            )
        m = cfg.size_multiple
        if x.shape[1] % m or x.shape[2] % m:
            raise ValueError(
                f"UNet with depth {cfg.depth} needs H and W divisible by {m}, got {x.shape[1:3]}; "
                "use consensus_jax.models.apply_padded (or a method's denoise) for other sizes."
            )
        dtype = _DTYPES[cfg.dtype]
        reshape = resolve_layer_impl(cfg.layer_impl) == "reshape"
        h = x.astype(dtype)
        skips = []
        for level in range(cfg.depth):
            h = _DoubleConv(cfg.base_features * 2**level, dtype, name=f"down{level}")(h)
            skips.append(h)
            h = _max_pool_2x2(h) if reshape else nn.max_pool(h, (2, 2), strides=(2, 2))
        h = _DoubleConv(cfg.base_features * 2**cfg.depth, dtype, name="bottom")(h)
        for level in reversed(range(cfg.depth)):
            features = cfg.base_features * 2**level
            if reshape:
                h = _UpConvGemm(features, dtype, name=f"up{level}")(h)
            else:
                h = nn.ConvTranspose(features, (2, 2), strides=(2, 2), dtype=dtype,
                                     param_dtype=jnp.float32, name=f"up{level}")(h)
            h = jnp.concatenate([h, skips[level]], axis=-1)
            h = _DoubleConv(cfg.base_features * 2**level, dtype, name=f"dec{level}")(h)
        out = nn.Conv(
            cfg.out_channels, (1, 1), dtype=dtype, param_dtype=jnp.float32, name="head"
        )(h).astype(jnp.float32)
        if cfg.residual:
            out = out + x.astype(jnp.float32)
        return out


@functools.lru_cache(maxsize=32)
def _jitted_init(config: UNetConfig) -> Callable[[Array], Any]:
    # One compilation per architecture: eager flax init dispatches every op separately, and
    # compiling the threefry initialisers costs seconds on XLA CPU.
    # numpy, not jnp: a first call under a trace (jax.eval_shape) must not cache a tracer.
    dummy = np.zeros((1, config.size_multiple, config.size_multiple, config.in_channels),
                     np.float32)

    def init(key: Array) -> Any:
        # The initialisers draw from an RBG key derived from the caller's key: XLA CPU compiles
        # threefry's 20 rounds for every parameter (4.7 s for a depth-2 UNet, 1.1 s with RBG).
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        data = data.astype(jnp.uint32)
        rbg = jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]),
                                       impl="rbg")
        return UNet(config).init(rbg, dummy)["params"]

    return jax.jit(init)


def init_params(config: UNetConfig, key: Array) -> Any:
    """Initialises one network's parameters (their shapes do not depend on the image size)."""
    return _jitted_init(config)(key)


def pad_to_multiple(x: Array, multiple: int) -> tuple[Array, tuple[int, int]]:
    """Reflect-pads [B, H, W, C] on the bottom/right to multiples of ``multiple``."""
    h, w = x.shape[1], x.shape[2]
    if not (isinstance(h, int) and isinstance(w, int)):
        return _pad_symbolic(x, multiple), (h, w)
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "edge"
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
    return x, (h, w)


def _pad_symbolic(x: Array, multiple: int) -> Array:
    """``pad_to_multiple`` for symbolic H, W (``jax.export``): the same reflection as a gather.

    Identical to ``jnp.pad(..., mode="reflect")`` wherever that mode applies (padding shorter
    than the image); sides shorter than the padding are reflected and then clamped.
    """
    for axis in (1, 2):
        n = x.shape[axis]
        size = (n + multiple - 1) // multiple * multiple
        i = jnp.arange(size)
        idx = jnp.clip(jnp.where(i < n, i, 2 * (n - 1) - i), 0, n - 1)
        x = jnp.take(x, idx, axis=axis)
    return x


def apply_padded(apply_fn: Callable[[Any, Array], Array], params: Any, x: Array,
                 multiple: int) -> Array:
    """Applies ``apply_fn(params, x)`` to [B, H, W, C] of any size: pad, apply, crop back."""
    xp, (h, w) = pad_to_multiple(x, multiple)
    return apply_fn(params, xp)[:, :h, :w, :]
