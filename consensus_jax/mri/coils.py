"""Coil sensitivity maps from the ACS lines, and sensitivity-weighted coil combination.

Maps are estimated from the undersampled data itself, as in the paper ("the central 48 lines were
kept for ... sensitivity map estimation"): the ACS block is Hann-windowed (both axes, to the same
resolution), zero-filled to full size and inverse transformed into low-resolution coil images
``c_c``; the maps are ``S_c = c_c / sqrt(sum_c |c_c|^2)`` on a support mask where the
low-resolution root-sum-of-squares exceeds ``threshold`` times its maximum, and 0 outside. The
support keeps SENSE from fitting noise in the background. The maps carry the image's
low-resolution phase, so the combined images are close to real-valued; every image of a slice
(reference, zero-filled, halves, SENSE) must use the SAME maps, or that phase differs between them
and dominates complex errors.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax.mri.fft import ifft2c
from consensus_jax.mri.masks import center_slice

Array = jax.Array


def coil_combine(coil_images: Array, maps: Array) -> Array:
    """Sensitivity-weighted combination ``sum_c conj(S_c) y_c / sum_c |S_c|^2``.

    Args:
      coil_images: complex [..., C, H, W].
      maps: complex [..., C, H, W] sensitivities (0 outside the support).

    Returns:
      complex [..., H, W], 0 where ``sum_c |S_c|^2 == 0`` (outside the support).
    """
    num = jnp.sum(jnp.conj(maps) * coil_images, axis=-3)
    den = jnp.sum(jnp.abs(maps) ** 2, axis=-3)
    inside = den > 0
    return jnp.where(inside, num / jnp.where(inside, den, 1.0), 0.0).astype(num.dtype)


def acs_window(height: int, width: int, num_center_lines: int, hann: bool = True) -> np.ndarray:
    """float32 [H, W] (numpy, static): the windowed ACS block, zero elsewhere.

    Columns: the ``num_center_lines`` ACS columns. Rows: the same resolution in kx,
    ``round(num_center_lines * H / W)`` central rows, so the maps are equally smooth along both
    axes. With ``hann`` a separable Hann window (non-zero end points) suppresses ringing.
    """
    cols = center_slice(width, num_center_lines)
    num_rows = max(1, min(height, round(num_center_lines * height / width)))
    rows = center_slice(height, num_rows)

    def taper(n: int) -> np.ndarray:
        if not hann:
            return np.ones(n)
        return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(1, n + 1) / (n + 1))

    window = np.zeros((height, width), dtype=np.float32)
    window[rows, cols] = np.outer(taper(num_rows), taper(num_center_lines))
    return window


@partial(jax.jit, static_argnames=("num_center_lines", "threshold", "hann"))
def estimate_sensitivity_maps(kspace: Array, num_center_lines: int, threshold: float = 0.05,
                              hann: bool = True) -> tuple[Array, Array]:
    """Sensitivity maps from the ACS lines of (undersampled or full) k-space.

    Args:
      kspace: complex [..., C, kx, ky]; only the ``num_center_lines`` centre ky columns are used.
      num_center_lines: ACS columns around ky = 0 (paper: 48).
      threshold: support = low-resolution RSS > threshold * its per-slice maximum.
      hann: Hann-window the ACS block (else a plain box).

    Returns:
      (maps complex [..., C, H, W] with ``sum_c |S_c|^2 = 1`` on the support and 0 outside,
      support bool [..., H, W]).
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}; 0.05 is a good default.")
    h, w = kspace.shape[-2:]
    window = jnp.asarray(acs_window(h, w, num_center_lines, hann))
    low_res = ifft2c(kspace * window.astype(kspace.dtype))
    rss = jnp.sqrt(jnp.sum(jnp.abs(low_res) ** 2, axis=-3))
    peak = jnp.max(rss, axis=(-2, -1), keepdims=True)
    support = rss > threshold * peak
    safe = jnp.where(support, rss, 1.0)[..., None, :, :]
    maps = jnp.where(support[..., None, :, :], low_res / safe, 0.0).astype(low_res.dtype)
    return maps, support
