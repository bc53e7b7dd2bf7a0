"""Consensus split of the sampled k-space lines into two zero-mean halves (paper, Sec. 3.1).

Each sampled outer line goes to half 1 or half 2 with probability 1/2 (so the halves are
disjoint outside the centre); the ACS centre lines are kept in both. Each half is zero-filled and
its outer lines are multiplied by ``1 / p_half`` with ``p_half = p / 2`` the probability that a
given outer line ends up in that half (``p`` from ``masks.outer_line_probability``). The weight of
every ky column then has expectation 1 over masks and splits, so the zero-filled half image is an
unbiased estimate of the fully sampled image and ``x_i = x + n_i`` with ``E[n_i] = 0``: the
paper's "amplified by a factor of 8" at 4x (``1 / p_half = 2R`` in the "outer" convention).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from consensus_jax.mri.masks import (
    Undersampling,
    center_lines,
    outer_line_probability,
    outer_region,
)

Array = jax.Array


def half_amplification(undersampling: Undersampling, width: int,
                       acquired: tuple[int, int] | None = None) -> float:
    """``1 / p_half = 2 / p``: the factor applied to a half's outer lines (8 at R = 4, "outer")."""
    num_acquired = int(outer_region(width, undersampling, acquired).sum())
    num_acquired += undersampling.num_center_lines
    return 2.0 / outer_line_probability(undersampling, num_acquired)


def split_mask(key: Array, mask: Array, num_center_lines: int) -> tuple[Array, Array]:
    """Splits sampled outer lines at random into two disjoint halves; centre lines in both.

    Args:
      key: PRNG key (independent coins for every slice and column).
      mask: bool [..., W], the undersampling mask(s).
      num_center_lines: ACS columns around ky = 0.

    Returns:
      (mask1, mask2), bool [..., W]: ``mask1 | mask2 == mask``, ``mask1 & mask2 == centre``.
    """
    center = jnp.asarray(center_lines(mask.shape[-1], num_center_lines))
    coin = jax.random.bernoulli(key, 0.5, mask.shape)
    outer = mask & ~center
    return center | (outer & coin), center | (outer & ~coin)


def half_weights(mask_half: Array, num_center_lines: int, amplification: float) -> Array:
    """Column weights float32 [..., W]: 1 on centre lines, ``amplification`` on sampled outer
    lines of the half, 0 elsewhere (multiply k-space [..., C, kx, ky] by ``w[..., None, None, :]``).
    """
    center = jnp.asarray(center_lines(mask_half.shape[-1], num_center_lines))
    w = jnp.where(mask_half, jnp.float32(amplification), jnp.float32(0.0))
    return jnp.where(center, jnp.float32(1.0), w)


@partial(jax.jit, static_argnames=("undersampling", "acquired"))
def split_kspace(key: Array, kspace: Array, mask: Array, undersampling: Undersampling,
                 acquired: tuple[int, int] | None = None
                 ) -> tuple[Array, Array, Array, Array]:
    """Zero-filled, amplified half k-spaces from fully sampled (or already masked) k-space.

    Args:
      key: PRNG key for the split.
      kspace: complex [..., C, kx, ky]; columns outside ``mask`` are ignored.
      mask: bool [..., W] undersampling mask (from ``masks.sample_mask``).
      undersampling: the pattern that drew ``mask`` (sets the amplification).
      acquired: (start, stop) acquired ky columns, as given to the mask sampler.

    Returns:
      (kspace1, kspace2, mask1, mask2): halves [..., C, kx, ky] with E[kspace_i] = kspace, and
      their masks [..., W].
    """
    width = kspace.shape[-1]
    amp = half_amplification(undersampling, width, acquired)
    m1, m2 = split_mask(key, mask, undersampling.num_center_lines)
    w1 = half_weights(m1, undersampling.num_center_lines, amp)[..., None, None, :]
    w2 = half_weights(m2, undersampling.num_center_lines, amp)[..., None, None, :]
    return kspace * w1.astype(kspace.dtype), kspace * w2.astype(kspace.dtype), m1, m2
