"""Consensus split of the sampled k-space lines into two zero-mean halves (paper, Sec. 3.1).

Each sampled outer line goes to half 1 or half 2 with probability 1/2 (so the halves are
disjoint outside the centre); the ACS centre lines are kept in both. Each half is zero-filled and
its outer lines are multiplied by ``1 / p_half`` with ``p_half = p / 2`` the probability that a
given outer line ends up in that half (``p`` from ``masks.outer_line_probability``). The weight of
every ky column then has expectation 1 over masks and splits, so the zero-filled half image is an
unbiased estimate of the fully sampled image and ``x_i = x + n_i`` with ``E[n_i] = 0``: the
paper's "amplified by a factor of 8" at 4x (``1 / p_half = 2R`` in the "outer" convention).

K-way splits (``partition_mask``, ``split_kspace_k``) deal every sampled outer line to one of K
subsets uniformly at random, keep the centre lines in every subset and amplify a subset's outer
lines by ``K / p``. Given the mask, the K subset weights of an outer line sum to ``K / p`` for
every partition and each subset receives the line with probability 1 / K, so each subset's
zero-filled image has the expectation (over partitions) of the density-compensated zero-filling
of the acquired lines (outer lines times ``1 / p``), which over masks is the fully sampled image.
K = 2 is the paper's pair, drawn exactly as before K was a setting.
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


def subset_amplification(undersampling: Undersampling, width: int,
                         acquired: tuple[int, int] | None = None, num_splits: int = 2) -> float:
    """``K / p``: the factor applied to a subset's outer lines, ``1 / P(line in the subset)``
    with ``p`` the outer-line sampling probability (12 at K = 3, R = 4, "outer")."""
    _check_num_splits(num_splits)
    num_acquired = int(outer_region(width, undersampling, acquired).sum())
    num_acquired += undersampling.num_center_lines
    return float(num_splits) / outer_line_probability(undersampling, num_acquired)


def half_amplification(undersampling: Undersampling, width: int,
                       acquired: tuple[int, int] | None = None) -> float:
    """``1 / p_half = 2 / p``: the factor applied to a half's outer lines (8 at R = 4, "outer")."""
    return subset_amplification(undersampling, width, acquired, 2)


def _check_num_splits(num_splits: int) -> None:
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 2:
        raise ValueError(f"num_splits={num_splits!r}: the sampled lines are split into an "
                         "integer K >= 2 subsets (the paper's halves: 2).")


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


def partition_mask(key: Array, mask: Array, num_center_lines: int,
                   num_splits: int = 2) -> tuple[Array, ...]:
    """Deals the sampled outer lines at random into K disjoint subsets; centre lines in all.

    Args:
      key: PRNG key (an independent draw for every slice and column).
      mask: bool [..., W], the undersampling mask(s).
      num_center_lines: ACS columns around ky = 0.
      num_splits: K; 2 draws exactly ``split_mask``'s halves.

    Returns:
      K masks, bool [..., W]: their union is ``mask``, each pair intersects in the centre, and
      each sampled outer line lies in subset k with probability 1 / K.
    """
    _check_num_splits(num_splits)
    if num_splits == 2:
        return split_mask(key, mask, num_center_lines)
    center = jnp.asarray(center_lines(mask.shape[-1], num_center_lines))
    label = jax.random.randint(key, mask.shape, 0, num_splits)
    outer = mask & ~center
    return tuple(center | (outer & (label == k)) for k in range(num_splits))


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


@partial(jax.jit, static_argnames=("undersampling", "acquired", "num_splits"))
def split_kspace_k(key: Array, kspace: Array, mask: Array, undersampling: Undersampling,
                   acquired: tuple[int, int] | None = None, num_splits: int = 2
                   ) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """K zero-filled, amplified subset k-spaces (``split_kspace`` for K subsets).

    Args:
      key, kspace, mask, undersampling, acquired: as in ``split_kspace``.
      num_splits: K; 2 gives ``split_kspace``'s halves bit for bit.

    Returns:
      (kspaces, masks): K subsets [..., C, kx, ky] with outer lines amplified by ``K / p``, and
      their K masks [..., W].
    """
    if num_splits == 2:
        k1, k2, m1, m2 = split_kspace(key, kspace, mask, undersampling, acquired)
        return (k1, k2), (m1, m2)
    amp = subset_amplification(undersampling, kspace.shape[-1], acquired, num_splits)
    masks = partition_mask(key, mask, undersampling.num_center_lines, num_splits)
    weights = [half_weights(m, undersampling.num_center_lines, amp)[..., None, None, :]
               for m in masks]
    return tuple(kspace * w.astype(kspace.dtype) for w in weights), masks
