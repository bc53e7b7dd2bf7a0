"""Checks of the consensus split: zero-mean errors of the halves, their correlation, and bias.

With ``n_i = x_i - x_ref`` the errors of the two amplified, zero-filled halves:

- ``E[n_i] = 0`` over random masks and splits (unbiasedness, ``split_bias``);
- outer-line errors are negatively correlated: per outer ky line the half weights satisfy
  ``w1 * w2 = 0`` and ``E[w_i] = 1``, so ``Cov(w1, w2) = -1`` and ``Var(w_i) = 1 / p_half - 1``,
  a correlation of ``-1 / (2 / p - 1)`` (-1/7 at 4x in the "outer" convention);
- against the noiseless image the halves also share the centre lines and their noise, which adds
  a positive correlation.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from consensus_jax.mri.coils import coil_combine
from consensus_jax.mri.fft import ifft2c
from consensus_jax.mri.masks import Undersampling, sample_mask
from consensus_jax.mri.split import half_amplification, half_weights, split_mask

Array = jax.Array


def _channels(x: Array) -> Array:
    if jnp.iscomplexobj(x):
        return jnp.stack([x.real, x.imag], axis=-1)
    if x.shape[-1] != 2:
        raise ValueError(
            f"Real images must be [..., H, W, 2] (real, imaginary), got shape {x.shape}; "
            "or pass complex [..., H, W]."
        )
    return x


def split_noise_statistics(x1: Array, x2: Array, x_ref: Array,
                           support: Array | None = None) -> dict[str, Array]:
    """Mean, std and correlation of the split errors ``n1 = x1 - x_ref``, ``n2 = x2 - x_ref``.

    Args:
      x1, x2, x_ref: complex [..., H, W] or real/imaginary channels [..., H, W, 2].
      support: optional bool [..., H, W]: only these pixels count (e.g. the coil-map support).

    Returns:
      ``mean_n1``, ``mean_n2`` (mean of all real and imaginary values), ``std_n1``, ``std_n2``,
      and ``correlation``: the Pearson correlation of the stacked real and imaginary parts of
      n1 and n2 (scalars).
    """
    n1 = _channels(x1) - _channels(x_ref)
    n2 = _channels(x2) - _channels(x_ref)
    weight = jnp.ones(n1.shape, n1.dtype)
    if support is not None:
        weight = weight * support[..., None].astype(n1.dtype)
    count = jnp.sum(weight)
    m1, m2 = jnp.sum(weight * n1) / count, jnp.sum(weight * n2) / count
    c1, c2 = (n1 - m1) * weight, (n2 - m2) * weight
    v1, v2 = jnp.sum(c1**2) / count, jnp.sum(c2**2) / count
    cov = jnp.sum(c1 * c2) / count
    return {"mean_n1": m1, "mean_n2": m2, "std_n1": jnp.sqrt(v1), "std_n2": jnp.sqrt(v2),
            "correlation": cov / jnp.sqrt(v1 * v2)}


@partial(jax.jit, static_argnames=("undersampling", "num_draws", "acquired"))
def split_bias(kspace: Array, maps: Array, key: Array, undersampling: Undersampling,
               num_draws: int, acquired: tuple[int, int] | None = None) -> dict[str, Array]:
    """Monte-Carlo bias check: the mean of ``num_draws`` half images vs the fully sampled image.

    Each draw is a new mask and split. Zero-filling and coil combination are linear, so the mean
    of the half images equals the image of the mean column weights; that is what is computed.

    Args:
      kspace: fully sampled complex [C, kx, ky].
      maps: complex [C, H, W] coil maps used for every image.
      key: PRNG key.
      undersampling: the mask pattern.
      num_draws: M, the number of masks/splits averaged.
      acquired: (start, stop) acquired ky columns, None = all.

    Returns:
      ``rel_error_half``: ||mean_M(x1) - x_ref|| / ||x_ref|| (shrinks like 1/sqrt(M));
      ``rel_error_zero_filled``: the same for plain zero-filling (stays biased).
    """
    width = kspace.shape[-1]
    amp = half_amplification(undersampling, width, acquired)

    def draw(carry: tuple[Array, Array], k: Array) -> tuple[tuple[Array, Array], None]:
        k_mask, k_split = jax.random.split(k)
        mask = sample_mask(k_mask, width, undersampling, acquired)
        m1, _ = split_mask(k_split, mask, undersampling.num_center_lines)
        w1 = half_weights(m1, undersampling.num_center_lines, amp)
        return (carry[0] + w1, carry[1] + mask.astype(jnp.float32)), None

    zeros = jnp.zeros((width,), jnp.float32)
    (sum_half, sum_zf), _ = jax.lax.scan(draw, (zeros, zeros), jax.random.split(key, num_draws))
    x_ref = coil_combine(ifft2c(kspace), maps)

    def rel(weights: Array) -> Array:
        x = coil_combine(ifft2c(kspace * (weights / num_draws).astype(kspace.dtype)), maps)
        return jnp.linalg.norm(x - x_ref) / jnp.linalg.norm(x_ref)

    return {"rel_error_half": rel(sum_half), "rel_error_zero_filled": rel(sum_zf)}
