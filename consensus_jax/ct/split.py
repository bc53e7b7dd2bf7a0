"""Splitting the views of one scan into two halves, and the split's noise diagnostic.

The paper (Section 3.1) reconstructs ``x + n1`` from the odd views and ``x + n2`` from the even
views of the quarter-dose scan. A split is any function ``split(num_views, key) ->
(indices_half1, indices_half2)`` returning sorted, disjoint integer arrays that cover the views;
schemes are registered by name (``register_split``) and looked up with ``get_split``, so a new
scheme needs no change in its callers. Indices are concrete numpy arrays because they define the
half-scan geometries (``geometry.subset``), which are static under ``jax.jit``.

K-way splits (``view_subsets``) generalise the odd/even split to K interleaved subsets, subset k
holding the views v with v mod K = k; for K = 2 they are the registered split's two halves.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

SplitFn = Callable[[int, jax.Array | None], tuple[np.ndarray, np.ndarray]]

_SPLITS: dict[str, SplitFn] = {}


def register_split(name: str) -> Callable[[SplitFn], SplitFn]:
    """Decorator that makes a split function available as ``get_split(name)``."""

    def decorator(fn: SplitFn) -> SplitFn:
        if name in _SPLITS:
            raise ValueError(f"register_split: a split named {name!r} is already registered; "
                             "choose another name.")
        _SPLITS[name] = fn
        return fn

    return decorator


def available_splits() -> tuple[str, ...]:
    """Names accepted by ``get_split``."""
    return tuple(sorted(_SPLITS))


def get_split(name: str, **options) -> SplitFn:
    """The split registered as ``name``, with keyword ``options`` bound (e.g. ``num_folds=4``)."""
    if name not in _SPLITS:
        raise ValueError(f"split={name!r} is not registered; choose one of {available_splits()}.")
    fn = _SPLITS[name]
    return functools.partial(fn, **options) if options else fn


def _check_views(num_views: int) -> None:
    if num_views < 2:
        raise ValueError(f"num_views={num_views}: a split needs at least 2 views.")


@register_split("odd_even")
def odd_even(num_views: int, key: jax.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The paper's split: half 1 = odd-numbered views counting from 1 (indices 0, 2, 4, ...),
    half 2 = even-numbered views (indices 1, 3, 5, ...). ``key`` is unused."""
    del key
    _check_views(num_views)
    views = np.arange(num_views)
    return views[0::2], views[1::2]


@register_split("random_pairwise")
def random_pairwise(num_views: int, key: jax.Array | None) -> tuple[np.ndarray, np.ndarray]:
    """Each consecutive pair of views (2k, 2k + 1) sends one view, chosen at random, to each half.

    With an odd number of views the last view joins half 1. Needs a jax.random ``key``.
    """
    _check_views(num_views)
    if key is None:
        raise ValueError("random_pairwise needs a jax.random key (got key=None).")
    pairs = num_views // 2
    swap = np.asarray(jax.random.bernoulli(key, 0.5, (pairs,)))
    first = 2 * np.arange(pairs) + swap.astype(np.int64)
    second = 2 * np.arange(pairs) + 1 - swap.astype(np.int64)
    if num_views % 2:
        first = np.append(first, num_views - 1)
    return np.sort(first), np.sort(second)


@register_split("k_fold_interleaved")
def k_fold_interleaved(num_views: int, key: jax.Array | None = None,
                       num_folds: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Views are dealt into ``num_folds`` interleaved folds (fold f = views v with v % K == f);
    each half is ``num_folds / 2`` folds: folds 0 .. K/2 - 1 without a key, a random choice of
    K/2 folds with one. ``num_folds = 2`` is the odd/even split."""
    _check_views(num_views)
    if num_folds < 2 or num_folds % 2 or num_folds > num_views:
        raise ValueError(f"num_folds={num_folds} must be even, >= 2 and <= num_views "
                         f"({num_views}).")
    folds = np.arange(num_folds)
    if key is not None:
        folds = np.asarray(jax.random.permutation(key, num_folds))
    in_half1 = np.isin(np.arange(num_views) % num_folds, folds[: num_folds // 2])
    views = np.arange(num_views)
    return views[in_half1], views[~in_half1]


def interleaved(num_views: int, num_splits: int) -> tuple[np.ndarray, ...]:
    """K interleaved view subsets: subset k (from 0) = the views v with v mod K = k.

    Each subset spans the whole rotation with K times the angular step of the scan, so its
    Hann FBP (normalised by its own number of views) is an unbiased estimate of the image, with
    about K times the variance of the FBP of all views. ``num_splits = 2`` is ``odd_even``.
    """
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 2:
        raise ValueError(f"num_splits={num_splits!r} must be an integer >= 2.")
    if num_views < num_splits:
        raise ValueError(f"num_views={num_views} cannot be split into num_splits={num_splits} "
                         "non-empty view subsets; lower num_splits.")
    views = np.arange(num_views)
    return tuple(views[k::num_splits] for k in range(num_splits))


def view_subsets(split: str, num_views: int, key: jax.Array | None, num_splits: int = 2,
                 split_options: dict | None = None) -> tuple[np.ndarray, ...]:
    """The K view subsets of a scan: the registered ``split``'s two halves for K = 2, and the K
    interleaved subsets (views k mod K) for K > 2, which only the interleaved ("odd_even")
    split defines.

    Returns:
      K sorted, disjoint integer index arrays covering ``range(num_views)``.
    """
    if num_splits == 2:
        return tuple(get_split(split, **(split_options or {}))(num_views, key))
    if split != "odd_even" or split_options:
        raise ValueError(f"num_splits={num_splits} needs split='odd_even' (views k mod K), got "
                         f"split={split!r}{' with options' if split_options else ''}; the "
                         "other splits define two halves only.")
    _check_views(num_views)
    return interleaved(num_views, num_splits)


@dataclasses.dataclass(frozen=True)
class SplitDiagnostic:
    """Theorem 1's conditions, measured: the two noises should be zero-mean and uncorrelated.

    Attributes:
      mean_n1, mean_n2: mean of ``n1 = x1 - x_clean`` and ``n2 = x2 - x_clean`` (image units).
      std_n1, std_n2: their standard deviations (image units).
      correlation: Pearson correlation coefficient of n1 and n2 over the pixels.
    """

    mean_n1: float
    mean_n2: float
    std_n1: float
    std_n2: float
    correlation: float


def split_noise_diagnostic(x1: jax.Array, x2: jax.Array, x_clean: jax.Array,
                           mask: jax.Array | None = None) -> SplitDiagnostic:
    """Mean, std and correlation of the noise in two reconstructions of the same object.

    Args:
      x1, x2: the two noisy images, [B, H, W] or [H, W] (e.g. odd- and even-view FBPs, or the
        full- and quarter-dose FBPs).
      x_clean: the FBP of the noiseless projections with the same geometry and filter, same shape;
        measuring against it (not the source image) keeps the shared FBP blur out of the noise.
      mask: optional boolean [H, W] (or full-shape) region, e.g. the field of view.

    Returns:
      A SplitDiagnostic of Python floats.
    """
    n1 = jnp.asarray(x1, jnp.float32) - x_clean
    n2 = jnp.asarray(x2, jnp.float32) - x_clean
    if mask is None:
        weights = jnp.ones_like(n1)
    else:
        weights = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), n1.shape)
    count = jnp.sum(weights)
    mean1, mean2 = jnp.sum(n1 * weights) / count, jnp.sum(n2 * weights) / count
    d1, d2 = (n1 - mean1) * weights, (n2 - mean2) * weights
    var1, var2 = jnp.sum(d1 * d1) / count, jnp.sum(d2 * d2) / count
    cov = jnp.sum(d1 * d2) / count
    return SplitDiagnostic(mean_n1=float(mean1), mean_n2=float(mean2),
                           std_n1=float(jnp.sqrt(var1)), std_n2=float(jnp.sqrt(var2)),
                           correlation=float(cov / jnp.sqrt(var1 * var2)))
