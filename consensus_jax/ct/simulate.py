"""One CT slice end to end: HU image -> noisy full- and low-dose scans -> the paper's FBP images.

Paper Section 3.1: the quarter-dose views are split into two halves (odd/even by default), each
reconstructed by Hann-filtered FBP, giving ``x1 = x + n1`` and ``x2 = x + n2``; the quarter-dose
FBP of all views is ``x_est``; the full-dose FBP ``x_full`` is the paper's reference. The FBP of the
noiseless projections (``x_clean``) and the source image (``x_true``) are kept as extra references.
All images are returned in HU / 1000, the networks' input scale.

``consensus_inputs`` takes a scan to these images (the entry point of the same name as
``consensus_jax.mri.pipeline.consensus_inputs``); ``simulate_slice`` first simulates the scan
from an HU image.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax.ct.dose import MU_WATER_PER_MM, hu_to_mu, simulate_dose_pair
from consensus_jax.ct.fbp import fbp
from consensus_jax.ct.geometry import FanBeamGeometry, Geometry
from consensus_jax.ct.projector import forward_project
from consensus_jax.ct.split import view_subsets

# I0 and the dose fraction stay traced so a sweep over them reuses one compiled function.
_dose_pair = jax.jit(simulate_dose_pair, static_argnames=("electronic_noise_counts", "min_count"))


def _check_images(hu_images: jax.Array, geometry: Geometry) -> None:
    n = geometry.image.size_px
    if hu_images.ndim not in (2, 3) or hu_images.shape[-2:] != (n, n):
        raise ValueError(f"hu_image: expected [H, W] or [B, H, W] with H = W = "
                         f"geometry.image.size_px = {n}, got shape {tuple(hu_images.shape)}; "
                         "resample the image or change the geometry's ImageGrid.")


def simulate_sinograms(hu_images: jax.Array, geometry: Geometry, photons_per_ray: float,
                       key: jax.Array, dose_fraction: float = 0.25,
                       electronic_noise_counts: float = 0.0,
                       mu_water: float = MU_WATER_PER_MM) -> dict[str, jax.Array]:
    """Noiseless, full-dose and low-dose post-log sinograms of HU images.

    Args:
      hu_images: [B, H, W] or [H, W] in HU on ``geometry.image``.
      geometry: scan geometry.
      photons_per_ray: I0 at full dose, photons per ray.
      key: jax.random key (the noise is a deterministic function of it).
      dose_fraction: low dose / full dose; the low-dose counts are binomially thinned full-dose
        counts.
      electronic_noise_counts: std of additive electronic noise, counts.
      mu_water: water attenuation in 1/mm used for HU -> mu.

    Returns:
      {"p_clean", "p_full", "p_low"}: [B, views, detectors] (or [views, detectors]) line
      integrals, float32.
    """
    hu_images = jnp.asarray(hu_images, jnp.float32)
    _check_images(hu_images, geometry)
    if not photons_per_ray > 0 or not 0 < dose_fraction <= 1:
        raise ValueError(f"photons_per_ray={photons_per_ray!r} must be > 0 and dose_fraction="
                         f"{dose_fraction!r} in (0, 1] (0.25: quarter dose).")
    p_clean = forward_project(hu_to_mu(hu_images, mu_water), geometry)
    p_full, p_low = _dose_pair(p_clean, key, photons_per_ray=float(photons_per_ray),
                               dose_fraction=float(dose_fraction),
                               electronic_noise_counts=float(electronic_noise_counts))
    return {"p_clean": p_clean, "p_full": p_full, "p_low": p_low}


@functools.partial(jax.jit, static_argnames=("mu_water",))
def _to_hu_over_1000(mu: jax.Array, mu_water: float) -> jax.Array:
    return mu / mu_water - 1.0


def consensus_inputs(p_low: jax.Array, key: jax.Array, geometry: Geometry,
                     p_full: jax.Array | None = None, p_clean: jax.Array | None = None,
                     split: str = "odd_even", split_options: dict | None = None,
                     mu_water: float = MU_WATER_PER_MM, window: str = "hann",
                     cutoff: float = 1.0, num_splits: int = 2) -> dict[str, jax.Array]:
    """Raw scan -> the split inputs x1, x2 (x1 .. xK), x_est and the references (Sec. 3.1).

    Splits the low-dose views into two halves and reconstructs each half, and all views, by FBP;
    the full-dose and noiseless scans, when given, are reconstructed the same way as references.

    Args:
      p_low: [views, detectors] or [B, views, detectors] post-log low-dose sinogram (the scan).
      key: jax.random key of the view split; one split is drawn per call and shared by every
        slice of a batch.
      geometry: scan geometry (ParallelBeamGeometry, or FanBeamGeometry for the scanner).
      p_full: optional full-dose sinogram, shaped like ``p_low`` -> ``x_full``.
      p_clean: optional noiseless sinogram, shaped like ``p_low`` -> ``x_clean``.
      split: a name registered in ``consensus_jax.ct.split`` ("odd_even", "random_pairwise",
        "k_fold_interleaved"); ``split_options`` are passed to it.
      mu_water: water attenuation in 1/mm (mu -> HU).
      window, cutoff: FBP filter window and cutoff (fraction of Nyquist).
      num_splits: K, the number of view subsets (``split.view_subsets``: K > 2 takes the views
        k mod K and needs ``split="odd_even"``).

    Returns:
      float32 images [H, W] or [B, H, W] in HU / 1000: ``x1``, ``x2`` .. ``xK`` (low-dose FBP of
      each view subset, each normalised by its own number of views), ``x_est`` (low-dose FBP of all
      views), and ``x_full`` (full-dose FBP, the paper's reference) and ``x_clean`` (FBP of the
      noiseless projections) when their sinograms are given.
    """
    expected = (geometry.num_views, geometry.num_detectors)
    for name, p in (("p_low", p_low), ("p_full", p_full), ("p_clean", p_clean)):
        if p is not None and (p.ndim not in (2, 3) or tuple(p.shape[-2:]) != expected
                              or p.shape != p_low.shape):
            raise ValueError(f"{name}: expected [views, detectors] or [B, views, detectors] like "
                             f"p_low {tuple(p_low.shape)}, with (views, detectors) = {expected} "
                             f"from the geometry; got shape {tuple(p.shape)}. Pass sinograms "
                             "of this geometry, or the geometry they were scanned with.")
    subsets = view_subsets(split, geometry.num_views, key, num_splits, split_options)

    def recon(p, geom):
        return _to_hu_over_1000(fbp(p, geom, window=window, cutoff=cutoff), mu_water)

    out = {f"x{k + 1}": recon(p_low[..., views, :], geometry.subset(views))
           for k, views in enumerate(subsets)}
    out["x_est"] = recon(p_low, geometry)
    if p_full is not None:
        out["x_full"] = recon(p_full, geometry)
    if p_clean is not None:
        out["x_clean"] = recon(p_clean, geometry)
    return out


def simulate_slice(hu_image: jax.Array, geometry: Geometry, photons_per_ray: float,
                   key: jax.Array, dose_fraction: float = 0.25, split: str = "odd_even",
                   split_options: dict | None = None, electronic_noise_counts: float = 0.0,
                   mu_water: float = MU_WATER_PER_MM, window: str = "hann",
                   cutoff: float = 1.0, num_splits: int = 2) -> dict[str, jax.Array]:
    """The paper's images for one slice (or a batch of slices) of a simulated low-dose scan.

    HU image -> noiseless, full- and low-dose sinograms (``simulate_sinograms``) -> the split
    inputs and references (``consensus_inputs``), plus the source image.

    Args:
      hu_image: [H, W] or [B, H, W] source image in HU on ``geometry.image``.
      geometry: scan geometry (ParallelBeamGeometry, or FanBeamGeometry for the scanner).
      photons_per_ray: full-dose I0, photons per ray.
      key: jax.random key; outputs are deterministic given it. One view split is drawn per call
        and shared by every slice of a batch.
      dose_fraction: low dose / full dose (0.25: quarter dose).
      split, split_options, num_splits: the view split, as in ``consensus_inputs``.
      electronic_noise_counts: std of the additive electronic noise, counts.
      mu_water: water attenuation in 1/mm (HU <-> mu).
      window, cutoff: FBP filter window and cutoff (fraction of Nyquist).

    Returns:
      float32 images in HU / 1000, each shaped like ``hu_image``: ``x1`` .. ``xK``, ``x_est``,
      ``x_full``, ``x_clean`` (as in ``consensus_inputs``) and ``x_true`` (``hu_image / 1000``).
    """
    key_noise, key_split = jax.random.split(key)
    sinograms = simulate_sinograms(hu_image, geometry, photons_per_ray, key_noise,
                                   dose_fraction, electronic_noise_counts, mu_water)
    out = consensus_inputs(sinograms["p_low"], key_split, geometry, p_full=sinograms["p_full"],
                           p_clean=sinograms["p_clean"], split=split,
                           split_options=split_options, mu_water=mu_water, window=window,
                           cutoff=cutoff, num_splits=num_splits)
    out["x_true"] = jnp.asarray(hu_image, jnp.float32) / 1000.0
    return out


def default_noise_mask(geometry: Geometry) -> np.ndarray:
    """Boolean [H, W] disk where noise is measured: the inscribed circle of the grid, shrunk to
    the scanner's field of view for fan beam."""
    radius = geometry.image.size_px * geometry.image.pixel_size_mm / 2.0
    if isinstance(geometry, FanBeamGeometry):
        radius = min(radius, geometry.fov_radius_mm)
    return geometry.image.fov_mask(radius_mm=radius)


def low_dose_noise_sweep(hu_images: jax.Array, geometry: Geometry,
                         photons_per_ray: Sequence[float], key: jax.Array,
                         dose_fraction: float = 0.25, electronic_noise_counts: float = 0.0,
                         mask: np.ndarray | None = None,
                         mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Calibration sweep: mean squared difference (HU^2) between the low-dose FBP (``x_est``)
    and the full-dose FBP over ``mask``, per slice and per I0, sharing one forward projection.

    The same ``key`` draws the noise at every I0. Away from photon starvation the difference's
    variance scales like 1/I0 (``(1/dose_fraction - 1) / (I0 exp(-p))`` per ray before the
    filter); at low I0 it grows faster.

    Args:
      hu_images: [B, H, W] or [H, W] in HU on ``geometry.image``.
      photons_per_ray: full-dose I0 values to try.
      key, dose_fraction, electronic_noise_counts, mu_water: as in ``simulate_sinograms``.
      mask: boolean [H, W] region (default: ``default_noise_mask(geometry)``).

    Returns:
      float64 array [len(photons_per_ray), B] of per-slice mean squared differences, HU^2.
    """
    hu_images = jnp.asarray(hu_images, jnp.float32)
    _check_images(hu_images, geometry)
    if hu_images.ndim == 2:
        hu_images = hu_images[None]
    if not 0 < dose_fraction <= 1:
        raise ValueError(f"dose_fraction={dose_fraction!r} must be in (0, 1] (0.25: quarter "
                         "dose).")
    region = jnp.asarray(default_noise_mask(geometry) if mask is None else mask)
    p_clean = forward_project(hu_to_mu(hu_images, mu_water), geometry)
    out = []
    for photons in photons_per_ray:
        if not photons > 0:
            raise ValueError(f"photons_per_ray must be > 0, got {photons!r}.")
        p_full, p_low = _dose_pair(p_clean, key, photons_per_ray=float(photons),
                                   dose_fraction=float(dose_fraction),
                                   electronic_noise_counts=float(electronic_noise_counts))
        # FBP is linear: one reconstruction of the difference instead of two.
        diff_hu = 1000.0 * fbp(p_low - p_full, geometry) / mu_water
        out.append(jnp.sum(jnp.where(region, diff_hu ** 2, 0.0), axis=(-2, -1))
                   / jnp.sum(region))
    return np.asarray(jnp.stack(out), np.float64)


def low_dose_noise_hu(hu_images: jax.Array, geometry: Geometry, photons_per_ray: float,
                      key: jax.Array, dose_fraction: float = 0.25,
                      electronic_noise_counts: float = 0.0, mask: np.ndarray | None = None,
                      mu_water: float = MU_WATER_PER_MM) -> float:
    """RMSE in HU of the low-dose FBP (``x_est``) against the full-dose FBP over ``mask`` and the
    batch (one point of ``low_dose_noise_sweep``). The paper's quarter-dose FBP row is 27.6 HU.
    """
    return float(np.sqrt(np.mean(low_dose_noise_sweep(
        hu_images, geometry, [photons_per_ray], key, dose_fraction, electronic_noise_counts, mask,
        mu_water))))
