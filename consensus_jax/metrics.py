"""RMSE and SSIM as reported in the paper's Tables 1-2, shared by CT and MRI.

``ssim`` reproduces ``skimage.metrics.structural_similarity(x, ref, data_range=R,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` exactly: an 11 x 11 Gaussian window
(sigma 1.5 px, truncated at 3.5 sigma) applied separably with half-sample symmetric padding
(scipy's ``mode="reflect"``), K1 = 0.01, K2 = 0.03, and the mean SSIM map cropped by the window
radius (5 px) on every side. It runs in JAX, batched over images.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SSIM_SIGMA_PX = 1.5
_TRUNCATE = 3.5
_K1, _K2 = 0.01, 0.03

#: The paper's liver window for CT SSIM (Table 1) and display (Fig. 1), HU.
LIVER_WINDOW_HU = (-160.0, 240.0)


def _gaussian_taps(sigma: float) -> np.ndarray:
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _filter(img: Array, taps: Array) -> Array:
    """Separable filter of [B, H, W] with half-sample symmetric padding (scipy 'reflect')."""
    r = (taps.shape[0] - 1) // 2
    p = jnp.pad(img, ((0, 0), (r, r), (r, r)), mode="symmetric")
    h, w = img.shape[1], img.shape[2]
    rows = sum(taps[k] * p[:, k:k + h, :] for k in range(taps.shape[0]))
    # Materialise the first pass: fused into the second, XLA recomputes it for every tap.
    rows = jax.lax.optimization_barrier(rows)
    return sum(taps[k] * rows[:, :, k:k + w] for k in range(taps.shape[0]))


@partial(jax.jit, static_argnames=("sigma",))
def ssim_map(x: Array, ref: Array, data_range: Array | float,
             sigma: float = SSIM_SIGMA_PX) -> Array:
    """SSIM map [B, H, W] of images x and ref, [B, H, W] (uncropped)."""
    x = x.astype(jnp.float32)
    ref = ref.astype(jnp.float32)
    taps = jnp.asarray(_gaussian_taps(sigma))
    # One filter pass over the five stacked maps: filtering each separately lets XLA fuse (and
    # recompute) the 121-tap stencil into every consumer, which is 4x slower on CPU.
    b = x.shape[0]
    stats = _filter(jnp.concatenate([x, ref, x * x, ref * ref, x * ref]), taps)
    mx, my, exx, eyy, exy = (stats[i * b:(i + 1) * b] for i in range(5))
    vx = exx - mx * mx
    vy = eyy - my * my
    cxy = exy - mx * my
    r = jnp.reshape(jnp.asarray(data_range, jnp.float32), (-1, 1, 1))
    c1, c2 = (_K1 * r) ** 2, (_K2 * r) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(x: Array, ref: Array, data_range: Array | float, sigma: float = SSIM_SIGMA_PX) -> Array:
    """Mean SSIM per image, [B]; inputs [B, H, W] or [H, W] (then a scalar).

    ``data_range`` is a scalar or one value per image (skimage's ``data_range``).
    """
    single = x.ndim == 2
    if single:
        x, ref = x[None], ref[None]
    if x.shape != ref.shape or x.ndim != 3:
        raise ValueError(f"ssim needs two [B, H, W] arrays of equal shape, got {x.shape}, "
                         f"{ref.shape}.")
    pad = int(_TRUNCATE * sigma + 0.5)
    if min(x.shape[1:]) <= 2 * pad:
        raise ValueError(f"Images of {x.shape[1:]} px are too small for SSIM with a "
                         f"{2 * pad + 1} px window.")
    m = ssim_map(x, ref, data_range, sigma)[:, pad:-pad, pad:-pad]
    out = jnp.mean(m, axis=(1, 2))
    return out[0] if single else out


def rmse(x: Array, ref: Array) -> Array:
    """Root-mean-square error per image, [B]: sqrt(mean over every non-batch axis of (x - ref)^2).

    For complex images stored as (real, imag) channels use ``complex_rmse``.
    """
    d = jnp.asarray(x, jnp.float32) - jnp.asarray(ref, jnp.float32)
    return jnp.sqrt(jnp.mean(jnp.square(d), axis=tuple(range(1, d.ndim))))


def complex_rmse(x: Array, ref: Array) -> Array:
    """RMSE of complex images given as [B, H, W, 2] (real, imag): sqrt(mean_pixels |x - ref|^2)."""
    d = jnp.asarray(x, jnp.float32) - jnp.asarray(ref, jnp.float32)
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(d), axis=-1), axis=(1, 2)))


def ct_metrics(x_hu: Array, ref_hu: Array, window_hu: tuple[float, float] = LIVER_WINDOW_HU
               ) -> dict[str, Array]:
    """Table 1 metrics for [B, H, W] images in HU.

    RMSE (HU) over the whole image; SSIM (x100, as printed in the paper) after clipping both images
    to ``window_hu`` with ``data_range`` = the window width (400 HU for the liver window).
    """
    lo, hi = window_hu
    xs, rs = jnp.clip(x_hu, lo, hi), jnp.clip(ref_hu, lo, hi)
    return {"rmse_hu": rmse(x_hu, ref_hu), "ssim": 100.0 * ssim(xs, rs, hi - lo)}


def mri_metrics(x: Array, ref: Array) -> dict[str, Array]:
    """Table 2 metrics for normalised complex images [B, H, W, 2] (real, imag).

    RMSE of the complex images (x 10^-3, as printed in the paper) and SSIM (x100) of the amplitude
    images with ``data_range`` = the maximum amplitude of each reference image.
    """
    amp = lambda v: jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(v, jnp.float32)), axis=-1))
    ax, ar = amp(x), amp(ref)
    data_range = jnp.max(ar, axis=(1, 2))
    return {"rmse_1e3": 1e3 * complex_rmse(x, ref), "ssim": 100.0 * ssim(ax, ar, data_range)}


def image_metrics(modality: str, x: Array, ref: Array) -> dict[str, Array]:
    """The table metrics of a [B, H, W, C] batch in the stored units (CT: HU / 1000, one channel;
    MRI: normalised real and imaginary channels), per image."""
    if modality == "ct":
        return ct_metrics(1000.0 * jnp.asarray(x[..., 0]), 1000.0 * jnp.asarray(ref[..., 0]))
    return mri_metrics(jnp.asarray(x), jnp.asarray(ref))
