"""The networks' disagreement as an uncertainty map, and how well it ranks the error.

A scheme with K >= 2 networks on K independent splits (the consensus pair, K = 2) gets a per-pixel
uncertainty for free at inference: the spread of its networks' outputs,

    s(x) = std_k f_k(x_k) = sqrt((1/K) sum_k (f_k(x_k) - z)^2),   z = (1/K) sum_k f_k(x_k),

the population standard deviation over k (ddof 0). For the pair it is ``|f1 - f2| / 2``. On
images with channels (MRI: real and imaginary) it is taken per channel; ``pixel_magnitude`` turns
a per-channel map into one value per pixel (the root sum of squares over channels, the modulus
of the complex spread for MRI: ``|f1 - f2| / 2`` as complex numbers for the pair).

Whether the map is worth having is measured by ranking: per non-overlapping 16 x 16 patch, the
mean spread against the RMS error of ``z`` against a reference, as Spearman's rank correlation
(``spread_error_correlation``). Everything but the rank correlation (NumPy, on the host) is a
pure, jit-able function of arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
#: Side of the square, non-overlapping patches the spread and the error are compared on (px).
PATCH_PX = 16


def network_spread(outputs: Sequence[Array]) -> Array:
    """Per-pixel standard deviation over the K networks' outputs (ddof 0).

    Args:
      outputs: [f_1(x_1), ..., f_K(x_K)], K >= 2, each [B, H, W, C] in the images' units.
    Returns:
      [B, H, W, C], >= 0, in the same units; ``|f1 - f2| / 2`` for K = 2.
    """
    if len(outputs) < 2:
        raise ValueError(f"The spread needs at least two networks' outputs, got {len(outputs)}.")
    return jnp.std(jnp.stack([jnp.asarray(y) for y in outputs]), axis=0)


def pixel_magnitude(x: Array) -> Array:
    """[B, H, W, C] -> [B, H, W]: root sum of squares over channels (``|x|`` for one channel,
    the complex modulus for (real, imaginary) channels)."""
    return jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32)), axis=-1))


def _patches(x: Array, patch_px: int) -> Array:
    """[B, H, W] -> [B, H // p, W // p, p * p]: the whole patches inside the image (a margin
    narrower than a patch at the bottom and right is left out)."""
    b, h, w = x.shape
    rows, cols = h // patch_px, w // patch_px
    if rows == 0 or cols == 0:
        raise ValueError(f"Images of {h} x {w} px hold no {patch_px} x {patch_px} patch.")
    x = x[:, :rows * patch_px, :cols * patch_px]
    x = x.reshape(b, rows, patch_px, cols, patch_px)
    return jnp.moveaxis(x, 2, 3).reshape(b, rows, cols, patch_px * patch_px)


def patch_mean_spread(spread: Array, patch_px: int = PATCH_PX) -> Array:
    """Mean of the per-pixel spread magnitude over each patch.

    Args:
      spread: [B, H, W, C] (``network_spread``).
    Returns:
      [B, H // patch_px, W // patch_px], in the images' units.
    """
    return jnp.mean(_patches(pixel_magnitude(spread), patch_px), axis=-1)


def patch_mean(x: Array, patch_px: int = PATCH_PX) -> Array:
    """Mean of the first channel over each patch (e.g. the mean HU of a CT patch).

    Args:
      x: [B, H, W, C].
    Returns:
      [B, H // patch_px, W // patch_px], in the images' units.
    """
    return jnp.mean(_patches(jnp.asarray(x, jnp.float32)[..., 0], patch_px), axis=-1)


def patch_rms_error(z: Array, reference: Array, patch_px: int = PATCH_PX) -> Array:
    """RMS error of ``z`` against ``reference`` over each patch: sqrt(mean over the patch's
    pixels of sum over channels of (z - reference)^2).

    Args:
      z, reference: [B, H, W, C].
    Returns:
      [B, H // patch_px, W // patch_px], in the images' units.
    """
    diff = jnp.asarray(z, jnp.float32) - jnp.asarray(reference, jnp.float32)
    return jnp.sqrt(jnp.mean(_patches(pixel_magnitude(diff) ** 2, patch_px), axis=-1))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # rank - 1 of each distinct value's first occurrence
    return (first + (counts + 1) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long samples (flattened): the Pearson
    correlation of their ranks, ties ranked by their mean rank. NaN when either sample is
    constant (no ranking) or shorter than 2."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"spearman: samples of {a.size} and {b.size} values.")
    if a.size < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def spread_error_correlation(patch_spread: np.ndarray, patch_error: np.ndarray,
                             inside: np.ndarray | None = None
                             ) -> dict[str, float | list[float] | int]:
    """How well the spread ranks the error, from per-patch values [S, rows, cols].

    Args:
      inside: optional bool [S, rows, cols], the patches inside the imaged object.
    Returns:
      ``per_slice``: Spearman's rho over the patches of each slice [S] (NaN for a slice whose
      spread or error is constant); ``mean`` and ``std`` of the finite ones (``num_slices``
      of them); ``pooled``: rho over all patches of all slices (``num_patches``); with
      ``inside``, ``object_pooled``: rho over the patches inside (``object_patches``).
    """
    spread = np.asarray(patch_spread)
    error = np.asarray(patch_error)
    if spread.shape != error.shape or spread.ndim != 3:
        raise ValueError(f"Per-patch spread {spread.shape} and error {error.shape} must both be "
                         "[S, rows, cols].")
    per_slice = np.array([spearman(s, e) for s, e in zip(spread, error, strict=True)])
    finite = per_slice[np.isfinite(per_slice)]
    within = {}
    if inside is not None:
        inside = np.asarray(inside, bool)
        if inside.shape != spread.shape:
            raise ValueError(f"inside {inside.shape} must be shaped like the patches "
                             f"{spread.shape}.")
        within = {"object_pooled": spearman(spread[inside], error[inside]),
                  "object_patches": int(inside.sum())}
    return {"per_slice": per_slice.tolist(),
            "mean": float(np.mean(finite)) if finite.size else float("nan"),
            "std": float(np.std(finite)) if finite.size else float("nan"),
            "num_slices": int(finite.size),
            "pooled": spearman(spread, error),
            "num_patches": int(spread.size), **within}
