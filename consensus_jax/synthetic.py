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


def noisy_pairs(num: int, size_px: int, sigma: float, seed: int, channels: int = 1,
                num_splits: int = 2) -> dict[str, np.ndarray]:
    """A split-measurement-like set: ``x_ref`` (clean), ``x1`` .. ``xK``, ``x_est``;
    [N, H, W, C]. Each of the K splits holds 1/K of the measurement, so its noise std is
    ``sigma * sqrt(K / 2)`` (``sigma`` for the paper's halves) and ``x_est``, their mean, has
    the same noise whatever K."""
    x = smooth_images(num, size_px, seed, channels=channels)
    rng = np.random.default_rng(seed + 1)
    std = sigma if num_splits == 2 else sigma * np.sqrt(num_splits / 2.0)
    splits = {f"x{k + 1}": x + (std * rng.standard_normal(x.shape)).astype(np.float32)
              for k in range(num_splits)}
    x_est = 0.5 * (splits["x1"] + splits["x2"]) if num_splits == 2 else \
        sum(splits.values()) / num_splits
    return {**splits, "x_est": x_est, "x_ref": x}
