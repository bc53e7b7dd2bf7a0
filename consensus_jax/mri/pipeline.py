"""From fully sampled multi-coil k-space to the consensus network's inputs (paper, Sec. 3.1).

Per slice: draw a 4x Cartesian mask (48 centre lines always kept), split its sampled outer lines
at random into two halves (centre lines in both), zero-fill each half with its outer lines
amplified by ``2R`` ("8x each", amplified by 8), estimate coil maps from the ACS lines, and
reconstruct with those SAME maps:

- ``x1``, ``x2``: the two zero-filled, amplified halves (``x + n1``, ``x + n2``, E[n_i] = 0);
- ``x_est``: CG-SENSE of the undersampled data (the paper's ``x_est``);
- ``x_zf``: plain zero-filling of the undersampled data (a baseline, biased);
- ``x_ref``: the fully sampled coil-combined image (the reference);
- ``x_clean``: as ``x_ref`` from noiseless k-space, when that is known (simulation).

All images are divided by one per-slice ``scale = max(|Re x_est|, |Im x_est|)``, so ``x_est``
lies in [-1, 1] (the paper normalises MR images to [-1, 1]), and stored as real/imaginary
channels ``[..., H, W, 2]`` float32 (the paper feeds real and imaginary parts as two channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp

from consensus_jax.mri.coils import coil_combine, estimate_sensitivity_maps
from consensus_jax.mri.fft import ifft2c
from consensus_jax.mri.masks import Undersampling, sample_mask, sample_mask_with_holdout
from consensus_jax.mri.sense import cg_sense
from consensus_jax.mri.split import split_kspace_k

Array = jax.Array


@dataclass(frozen=True)
class ConsensusMRIConfig:
    """How a slice is undersampled, split and reconstructed (defaults: the paper's knee setting).

    Attributes:
      undersampling: mask pattern (paper: 4x, 48 centre lines, outer-line probability 1/4).
      sense_lambda: Tikhonov weight of CG-SENSE, relative to A^H A (norm <= 1).
      sense_iterations: CG iterations of CG-SENSE.
      map_threshold: coil-map support = low-resolution RSS > threshold * max.
      map_hann: Hann-window the ACS block before estimating the maps.
      num_splits: K, the subsets the sampled outer lines are dealt into (paper: 2 halves).
      validation_holdout_fraction: 0 for training and test slices. > 0 (validation slices):
        besides the mask, extra outer lines are measured and kept out of both halves, x_est
        and x_zf (``masks.sample_mask_with_holdout``), this fraction of all measured outer
        lines in expectation; their k-space is returned for the k-space validation criterion.
    """

    undersampling: Undersampling = field(default_factory=Undersampling)
    sense_lambda: float = 1e-2
    sense_iterations: int = 30
    map_threshold: float = 0.05
    map_hann: bool = True
    num_splits: int = 2
    validation_holdout_fraction: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.num_splits, bool) or not isinstance(self.num_splits, int) or \
                self.num_splits < 2:
            raise ValueError(f"num_splits must be an integer >= 2, got {self.num_splits!r}.")
        if self.sense_lambda < 0:
            raise ValueError(f"sense_lambda must be >= 0, got {self.sense_lambda}.")
        if not 0.0 <= self.validation_holdout_fraction < 1.0:
            raise ValueError(f"validation_holdout_fraction must lie in [0, 1), got "
                             f"{self.validation_holdout_fraction}.")
        if self.sense_iterations < 1:
            raise ValueError(f"sense_iterations must be >= 1, got {self.sense_iterations}.")


def as_channels(image: Array) -> Array:
    """complex [..., H, W] -> float32 [..., H, W, 2] (real, imaginary)."""
    return jnp.stack([image.real, image.imag], axis=-1).astype(jnp.float32)


def from_channels(image: Array) -> Array:
    """float [..., H, W, 2] (real, imaginary) -> complex64 [..., H, W]."""
    return jax.lax.complex(image[..., 0].astype(jnp.float32), image[..., 1].astype(jnp.float32))


def _one_slice(kspace: Array, key: Array, kspace_clean: Array | None,
               config: ConsensusMRIConfig, acquired: tuple[int, int] | None
               ) -> dict[str, Array]:
    us = config.undersampling
    k_mask, k_split = jax.random.split(key)
    holdout = config.validation_holdout_fraction
    if holdout > 0:
        # The same draw as sample_mask: the used lines, hence every image, are those of a slice
        # without held-out lines; the held-out ones come on top.
        mask, held = sample_mask_with_holdout(k_mask, kspace.shape[-1], us, acquired, holdout)
    else:
        mask = sample_mask(k_mask, kspace.shape[-1], us, acquired)
    y = kspace * mask.astype(kspace.real.dtype)
    subsets, subset_masks = split_kspace_k(k_split, y, mask, us, acquired, config.num_splits)
    maps, support = estimate_sensitivity_maps(y, us.num_center_lines, config.map_threshold,
                                              config.map_hann)
    images = {
        **{f"x{k + 1}": coil_combine(ifft2c(kk), maps) for k, kk in enumerate(subsets)},
        "x_est": cg_sense(y, maps, mask, config.sense_lambda, config.sense_iterations),
        "x_zf": coil_combine(ifft2c(y), maps),
        "x_ref": coil_combine(ifft2c(kspace), maps),
    }
    if kspace_clean is not None:
        images["x_clean"] = coil_combine(ifft2c(kspace_clean), maps)
    x_est = images["x_est"]
    scale = jnp.maximum(jnp.max(jnp.abs(x_est.real)), jnp.max(jnp.abs(x_est.imag)))
    safe = jnp.where(scale > 0, scale, 1.0)
    out = {name: as_channels(img / safe) for name, img in images.items()}
    out.update(scale=scale.astype(jnp.float32), mask=mask.astype(jnp.uint8),
               **{f"mask{k + 1}": m.astype(jnp.uint8) for k, m in enumerate(subset_masks)},
               support=support.astype(jnp.uint8), maps=maps)
    if holdout > 0:
        # In the images' units (divided by scale), so fft2c(maps * z) compares with it directly.
        out.update(heldout=held.astype(jnp.uint8),
                   heldout_kspace=kspace * (held.astype(kspace.real.dtype) / safe))
    return out


@partial(jax.jit, static_argnames=("config", "acquired", "return_maps"))
def consensus_inputs(kspace: Array, key: Array, config: ConsensusMRIConfig,
                     kspace_clean: Array | None = None,
                     acquired: tuple[int, int] | None = None,
                     return_maps: bool = False) -> dict[str, Array]:
    """Raw scan -> the split inputs x1, x2 (x1 .. xK), x_est and the references (Sec. 3.1).

    Masks the fully sampled k-space 4x, splits the sampled outer lines into two halves and
    reconstructs each half, the undersampled data (SENSE, zero-filling) and the fully sampled
    reference with the same estimated coil maps.

    Args:
      kspace: complex [C, kx, ky] (one slice) or [S, C, kx, ky] (S slices, a different mask
        and split per slice), fully sampled; ky is the phase-encode axis.
      key: PRNG key (split per slice).
      config: undersampling, split and SENSE settings.
      kspace_clean: optional noiseless k-space of the same shape (simulation) -> ``x_clean``.
      acquired: (start, stop) acquired ky columns (fastMRI zero padding), None = all.
      return_maps: also return the estimated maps (complex64 [..., C, H, W]).

    Returns:
      A dict (leading [S] axis when batched): ``x1 .. xK, x_est, x_zf, x_ref`` (and ``x_clean``)
      float32 [..., H, W, 2], all divided by the same ``scale`` float32 [...] (so ``x_est`` is in
      [-1, 1]; multiply by it to recover k-space units); ``mask, mask1 .. maskK`` uint8 [..., W]
      (the 4x mask and its K = ``config.num_splits`` subsets); ``support`` uint8 [..., H, W]
      (coil-map support). With ``config.validation_holdout_fraction > 0`` also ``heldout``
      uint8 [..., W] (the held-out lines, disjoint from ``mask``), ``heldout_kspace`` complex64
      [..., C, kx, ky] (the measured k-space on them divided by ``scale``, 0 elsewhere) and
      ``maps``.
    """
    if kspace.ndim not in (3, 4) or not jnp.iscomplexobj(kspace):
        raise ValueError(
            f"kspace must be complex [C, kx, ky] or [S, C, kx, ky], got {kspace.dtype} "
            f"{kspace.shape}."
        )
    if kspace_clean is not None and kspace_clean.shape != kspace.shape:
        raise ValueError(
            f"kspace_clean shape {kspace_clean.shape} differs from kspace shape {kspace.shape}."
        )
    run = partial(_one_slice, config=config, acquired=acquired)
    if kspace.ndim == 3:
        out = run(kspace, key, kspace_clean)
    else:
        keys = jax.random.split(key, kspace.shape[0])
        out = jax.vmap(run)(kspace, keys, kspace_clean)
    if not return_maps and config.validation_holdout_fraction == 0:
        out.pop("maps")
    return out
