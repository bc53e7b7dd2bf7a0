"""Simulated multi-coil k-space from magnitude images (built in; nothing is downloaded).

A magnitude image (``phantoms.knee_phantom`` or ``phantoms.mni152_slices``) gets a smooth random
phase, is weighted by simulated receive-coil sensitivities (magnetic dipoles, i.e. small loops, on
a ring around the FOV, the Biot-Savart field of each loop; normalised so that the
root-sum-of-squares is 1 at every pixel), Fourier transformed and corrupted by complex Gaussian
noise. ``simulate_slice`` then runs ``pipeline.consensus_inputs`` on it.

Noise level: ``snr = max |x| / sigma`` where ``sigma^2 = E|n|^2`` is the variance of the complex
noise of each k-space sample; with orthonormal FFTs and RSS-normalised maps ``sigma`` is also the
noise std of the fully sampled coil-combined image. Keep it high (default 100): amplitude SSIM
over a large noisy background measures noise, not structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from consensus_jax.mri.fft import fft2c
from consensus_jax.mri.pipeline import ConsensusMRIConfig, consensus_inputs

Array = jax.Array


@dataclass(frozen=True)
class CoilSimulation:
    """Simulated acquisition (defaults: 8 coils; the knee setting uses ``num_coils=15``).

    Attributes:
      num_coils: receive coils on a ring around the FOV.
      snr: peak image magnitude / complex noise std; None simulates noiseless data.
      phase_rad: std (radians) of the smooth random phase's linear and quadratic terms.
      coil_radius: ring radius in units of the FOV half-width (> 1: coils outside the FOV).
    """

    num_coils: int = 8
    snr: float | None = 100.0
    phase_rad: float = 1.0
    coil_radius: float = 1.4

    def __post_init__(self) -> None:
        if self.num_coils < 1:
            raise ValueError(f"num_coils must be >= 1, got {self.num_coils}.")
        if self.snr is not None and not self.snr > 0:
            raise ValueError(f"snr must be > 0 (or None for noiseless data), got {self.snr}.")
        if not self.coil_radius > 1.0:
            raise ValueError(f"coil_radius must be > 1 (outside the FOV), got {self.coil_radius}.")


def birdcage_maps(num_coils: int, height: int, width: int, coil_radius: float = 1.4) -> Array:
    """Smooth, well-conditioned coil sensitivities, complex64 [C, H, W], RSS = 1 everywhere.

    Coil c is a small loop (a magnetic dipole pointing at the FOV centre) at angle 2 pi c / C on
    a ring of radius ``coil_radius`` (FOV half-widths), alternately 0.3 above and below the image
    plane; its receive sensitivity is ``B_x - i B_y`` of the dipole field
    ``(3 (m . r) r / |r|^5 - m / |r|^3)`` in the image plane.
    """
    rows = (jnp.arange(height) + 0.5) / height * 2.0 - 1.0
    cols = (jnp.arange(width) + 0.5) / width * 2.0 - 1.0
    y, x = jnp.meshgrid(rows, cols, indexing="ij")
    maps = []
    for c in range(num_coils):
        theta = 2.0 * jnp.pi * c / num_coils
        cx, cy = coil_radius * jnp.cos(theta), coil_radius * jnp.sin(theta)
        cz = 0.3 if c % 2 == 0 else -0.3
        mx, my = -jnp.cos(theta), -jnp.sin(theta)
        rx, ry, rz = x - cx, y - cy, -cz
        r2 = rx**2 + ry**2 + rz**2
        mdotr = mx * rx + my * ry
        bx = 3.0 * mdotr * rx / r2**2.5 - mx / r2**1.5
        by = 3.0 * mdotr * ry / r2**2.5 - my / r2**1.5
        maps.append(bx - 1j * by)
    maps = jnp.stack(maps)
    rss = jnp.sqrt(jnp.sum(jnp.abs(maps) ** 2, axis=0))
    return (maps / rss).astype(jnp.complex64)


def smooth_phase(key: Array, height: int, width: int, phase_rad: float = 1.0) -> Array:
    """Random smooth phase float32 [H, W] (radians): uniform offset + linear + quadratic terms."""
    k_off, k_coef = jax.random.split(key)
    offset = jax.random.uniform(k_off, (), minval=-jnp.pi, maxval=jnp.pi)
    a = phase_rad * jax.random.normal(k_coef, (5,))
    rows = (jnp.arange(height) + 0.5) / height * 2.0 - 1.0
    cols = (jnp.arange(width) + 0.5) / width * 2.0 - 1.0
    v, u = jnp.meshgrid(rows, cols, indexing="ij")
    return (offset + a[0] * u + a[1] * v + 0.5 * (a[2] * u**2 + a[3] * u * v + a[4] * v**2)
            ).astype(jnp.float32)


def simulate_kspace(image: Array, key: Array, coils: CoilSimulation
                    ) -> tuple[Array, Array, Array]:
    """Multi-coil k-space of one magnitude (or complex) image.

    Args:
      image: float or complex [H, W].
      key: PRNG key (phase and noise).
      coils: the simulated acquisition.

    Returns:
      (kspace noisy complex64 [C, kx, ky], kspace_clean complex64 [C, kx, ky],
       maps complex64 [C, H, W] the true sensitivities).
    """
    h, w = image.shape
    k_phase, k_noise = jax.random.split(key)
    x = image.astype(jnp.complex64)
    if not jnp.iscomplexobj(image):
        x = x * jnp.exp(1j * smooth_phase(k_phase, h, w, coils.phase_rad))
    maps = birdcage_maps(coils.num_coils, h, w, coils.coil_radius)
    clean = fft2c(maps * x[None])
    if coils.snr is None:
        return clean, clean, maps
    sigma = jnp.max(jnp.abs(x)) / coils.snr
    noise = jax.random.normal(k_noise, clean.shape, jnp.complex64)
    return (clean + sigma * noise).astype(jnp.complex64), clean, maps


@partial(jax.jit, static_argnames=("coils", "config", "return_maps"))
def simulate_slice(image: Array, key: Array, coils: CoilSimulation | None = None,
                   config: ConsensusMRIConfig | None = None,
                   return_maps: bool = False) -> dict[str, Array]:
    """Simulated consensus inputs for one image [H, W] or a batch [S, H, W].

    Args:
      image: magnitude float [H, W] or [S, H, W] (e.g. ``phantoms.knee_phantom``).
      key: PRNG key (phase, noise, mask and split; split per slice).
      coils: simulated coils and noise (None: ``CoilSimulation()``, 8 coils, SNR 100; knee
        setting: ``CoilSimulation(num_coils=15)``).
      config: undersampling / split / SENSE settings (None: ``ConsensusMRIConfig()``, the
        paper's 4x with 48 centre lines).
      return_maps: also return ``maps`` (estimated, as used) and ``maps_true``.

    Returns:
      The dict of ``pipeline.consensus_inputs`` (``x1, x2, x_est, x_zf, x_ref`` float32
      [..., H, W, 2], divided by the per-slice ``scale``; ``mask, mask1, mask2`` uint8 [..., W];
      ``support``), plus ``x_clean`` (noiseless fully sampled, same maps and scale) when
      ``coils.snr`` is set.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [S, H, W], got shape {image.shape}.")
    coils = CoilSimulation() if coils is None else coils
    config = ConsensusMRIConfig() if config is None else config
    batched = image.ndim == 3
    images = image if batched else image[None]
    k_sim, k_recon = jax.random.split(key)
    sim_keys = jax.random.split(k_sim, images.shape[0])
    kspace, clean, maps_true = jax.vmap(lambda im, k: simulate_kspace(im, k, coils))(
        images, sim_keys)
    out = consensus_inputs(kspace, k_recon, config,
                           kspace_clean=None if coils.snr is None else clean,
                           return_maps=return_maps)
    if return_maps:
        out["maps_true"] = maps_true
    if not batched:
        out = {name: value[0] for name, value in out.items()}
    return out
