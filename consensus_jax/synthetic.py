"""In-memory synthetic denoising problems for tests and quick checks: smooth images + noise.

The noisy halves mimic a split measurement: ``x1 = x + n1``, ``x2 = x + n2`` with independent,
zero-mean Gaussian noise, and ``x_est = (x1 + x2) / 2`` plays the role of the reconstruction from
all the data (the full-view FBP is the mean of the odd- and even-view FBPs).
"""

from __future__ import annotations

import numpy as np


def smooth_images(num: int, size_px: int, seed: int, smoothness_px: float = 3.0,
                  channels: int = 1) -> np.ndarray:
    """Random smooth images [num, size, size, channels], float32, roughly unit std."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size_px)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    transfer = np.exp(-2.0 * (np.pi * smoothness_px) ** 2 * k2)
    white = rng.standard_normal((num, channels, size_px, size_px))
    img = np.fft.ifft2(np.fft.fft2(white) * transfer).real
    img /= img.std(axis=(-2, -1), keepdims=True) + 1e-12
    return np.moveaxis(img, 1, -1).astype(np.float32)


def noisy_pairs(num: int, size_px: int, sigma: float, seed: int,
                channels: int = 1) -> dict[str, np.ndarray]:
    """A split-measurement-like set: ``x_ref`` (clean), ``x1``, ``x2``, ``x_est``; [N, H, W, C]."""
    x = smooth_images(num, size_px, seed, channels=channels)
    rng = np.random.default_rng(seed + 1)
    n1 = sigma * rng.standard_normal(x.shape).astype(np.float32)
    n2 = sigma * rng.standard_normal(x.shape).astype(np.float32)
    x1, x2 = x + n1, x + n2
    return {"x1": x1, "x2": x2, "x_est": 0.5 * (x1 + x2), "x_ref": x}
