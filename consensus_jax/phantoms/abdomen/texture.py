"""Tissue texture: band-limited 3-D Gaussian random fields, integrated over each pixel exactly."""

from __future__ import annotations

import math

import numpy as np

# Point standard deviation (HU) of the fine (1.2 mm), mid (2.5 mm) and coarse (5 mm) texture fields
# per tissue; pixel integration lowers the sampled std at coarse pixels, as in a real scanner.
TEXTURE = {
    "skin": (3.0, 3.0, 2.0), "fat": (3.0, 3.0, 3.0), "muscle": (5.0, 5.0, 4.0),
    "liver": (4.0, 6.0, 6.0), "spleen": (3.0, 5.0, 5.0), "kidney": (5.0, 6.0, 4.0),
    "blood": (2.0, 2.0, 3.0), "bone": (30.0, 20.0, 10.0), "arch": (25.0, 15.0, 10.0),
    "disc": (4.0, 4.0, 4.0), "csf": (2.0, 2.0, 2.0), "gut": (5.0, 8.0, 12.0),
    "pancreas": (6.0, 10.0, 8.0), "lung": (20.0, 20.0, 15.0), "fluid": (2.0, 2.0, 2.0),
}
_CORR_MM = (1.2, 2.5, 5.0)
_NUM_MODES = 384


def make_texture_modes(rng) -> tuple:
    modes = []
    for corr in _CORR_MM:
        k = rng.normal(0.0, 1.0 / corr, (_NUM_MODES, 3))
        modes.append((k, rng.uniform(0.0, 2.0 * np.pi, _NUM_MODES)))
    return tuple(modes)


def texture_field(modes, coord: np.ndarray, z_mm: float, pixel_mm: float) -> np.ndarray:
    """Unit-variance 3-D Gaussian random field cut at z, integrated over each pixel; [H, W].

    A sum of random cosines cos(k.x + phase) (k ~ N(0, I / corr^2): Gaussian covariance). The
    pixel average of each cosine is the cosine times sinc(kx p / 2 pi) sinc(ky p / 2 pi), so any
    pixel size samples the same continuous field. cos(a + b) = cos a cos b - sin a sin b makes the
    evaluation two matrix products.
    """
    k, phase = modes
    num = k.shape[0]
    amp = math.sqrt(2.0 / num) * np.sinc(k[:, 0] * pixel_mm / (2 * np.pi)) * np.sinc(
        k[:, 1] * pixel_mm / (2 * np.pi))
    # Phases are reduced modulo 2 pi in float64 before the float32 trigonometry.
    ax = np.mod(coord[:, None] * k[None, :, 0] + (phase + k[:, 2] * z_mm)[None, :], 2 * np.pi)
    ay = np.mod(coord[:, None] * k[None, :, 1], 2 * np.pi)
    ax, ay = ax.astype(np.float32), ay.astype(np.float32)
    amp = amp.astype(np.float32)
    left = np.concatenate([np.cos(ay) * amp, -np.sin(ay) * amp], axis=1)
    right = np.concatenate([np.cos(ax), np.sin(ax)], axis=1)
    # einsum's own loops: BLAS threads stall on small products when the cores are shared.
    return np.einsum("ik,jk->ij", left, right)
