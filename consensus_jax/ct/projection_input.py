"""Raw helical projections -> the images of the paper's CT data: x1, x2, x_est, x_full per slice.

The one function data preparation (``data_prep.ct --config=projections``) and denoising
(``consensus_jax.denoise --input=<DICOM-CT-PD series>``) share, so that a model meets at test
time exactly the images it was trained on.

For a slice at table position z (mm), the quarter-dose views are rebinned to a full-scan
fan-beam sinogram of N views (``rebin``, single-slice rebinning, each flying-focal-spot position
kept as its own source), numbered in order of increasing angle. Then (Wu et al. 2019, Section
3.1), with Hann-filtered FBP on the reconstruction grid:

- x1: FBP of the odd-numbered rebinned views counting from 1 (indices 0, 2, 4, ...: the
  ``odd_even`` split of ``consensus_jax.ct.split``); with an in-plane flying focal spot (FFSXY,
  the data set's scanners) these are the views of one focal spot, x2 those of the other;
- x2: FBP of the even-numbered views (indices 1, 3, 5, ...);
- x_est: FBP of all quarter-dose views;
- x_full: FBP of all full-dose views (the paper's reference), same geometry and filter.

FBP is linear and weighs each view by 2 pi / (its number of views), so with N even the FBP of all
views is exactly the mean of the two halves' FBPs: x_est = (x1 + x2) / 2 (up to float32
rounding; tests/test_projection_input.py checks it against the direct FBP of all views). x_est
is computed so, saving one FBP per slice. Images are returned in HU with the series' own water
attenuation, HU = 1000 (mu - mu_w) / mu_w.

Slice positions follow the table coordinate of the projection files: position z (mm) is the
DetectorFocalCenterAxialPosition a view's focal centre has when it lies in that slice.
``slice_grid`` lists the positions k * spacing (k integer) inside the rebinnable range, so a slice
index k names the same position in every series of a patient (full and quarter dose).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from consensus_jax.ct import ctpd
from consensus_jax.ct import rebin as rb
from consensus_jax.ct.geometry import ImageGrid
from consensus_jax.errors import InputError

#: Images ``reconstruct_slices`` can make, in the paper's names (consensus_jax/features.py).
QUARTER_DOSE_KEYS = ("x1", "x2", "x_est")
FULL_DOSE_KEY = "x_full"
PROJECTION_KEYS = (*QUARTER_DOSE_KEYS, FULL_DOSE_KEY)


def half_groups(groups: Sequence[rb.FocalSpotGroup], num_views: int
                ) -> tuple[list[rb.FocalSpotGroup], list[rb.FocalSpotGroup]]:
    """The focal-spot groups of the odd/even halves of ``num_views`` rebinned views.

    Half 1 holds the views with even index (0, 2, ...), half 2 those with odd index; each half is
    a list of (views, geometry) groups, one per focal spot it contains, its geometry restricted to
    those views (``FanBeamGeometry.subset``). ``rebin.reconstruct`` of a half's groups is that
    half's FBP.
    """
    if num_views < 2 or num_views % 2:
        raise ValueError(f"The odd/even split needs an even number of rebinned views, got "
                         f"{num_views}; the views per rotation of the scan must be even.")
    halves: tuple[list[rb.FocalSpotGroup], list[rb.FocalSpotGroup]] = ([], [])
    for parity, out in enumerate(halves):
        for group in groups:
            keep = np.flatnonzero(group.views % 2 == parity)
            if keep.size:
                out.append(rb.FocalSpotGroup(group.views[keep], group.geometry.subset(keep)))
    return halves


def slice_grid(scan: rb.HelicalScan, spacing_mm: float) -> np.ndarray:
    """Integer k of the positions k * spacing_mm (mm) inside ``rebin.slice_range_mm``, [n]."""
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"slice spacing must be a positive number of mm, got {spacing_mm!r}.")
    lo, hi = rb.slice_range_mm(scan)
    first, last = math.ceil(lo / spacing_mm - 1e-9), math.floor(hi / spacing_mm + 1e-9)
    return np.arange(first, last + 1, dtype=np.int64)


def check_positions(scan: rb.HelicalScan, z_mm: Sequence[float], source: str) -> None:
    """Raises InputError naming ``source`` when a position lies outside the rebinnable range."""
    lo, hi = rb.slice_range_mm(scan)
    outside = [float(z) for z in z_mm if not lo - 1e-6 <= float(z) <= hi + 1e-6]
    if outside:
        raise InputError(f"{source}: slice position(s) {', '.join(f'{z:g}' for z in outside[:5])}"
                         f" mm lie outside the range [{lo:.2f}, {hi:.2f}] mm that this scan "
                         "covers at every angle (within half a table feed). Choose positions "
                         "inside it.")


def _views_of(index: ctpd.ProjectionIndex, cache: dict, views: np.ndarray,
              progress: bool | None) -> np.ndarray:
    """[len(views), rows, channels] of ``views``, reusing the views read for the previous slice
    (neighbouring slices share most of their views)."""
    old_views, old = cache.get("views"), cache.get("data")
    if old_views is None:
        data = ctpd.read_views(index, views, progress)
    else:
        slot = np.searchsorted(old_views, views)
        slot = np.minimum(slot, old_views.size - 1)
        have = old_views[slot] == views
        data = np.empty((views.size, *old.shape[1:]), np.float32)
        data[have] = old[slot[have]]
        if not have.all():
            data[~have] = ctpd.read_views(index, views[~have], progress)
    cache["views"], cache["data"] = views, data
    return data


Halves = tuple[Sequence[rb.FocalSpotGroup], Sequence[rb.FocalSpotGroup]]


def quarter_dose_images(sinograms: np.ndarray | jax.Array, halves: Halves,
                        window: str = "hann") -> dict[str, np.ndarray]:
    """x1, x2 and x_est = (x1 + x2) / 2 (attenuation, 1/mm) of rebinned sinograms.

    Args:
      sinograms: [S, N, channels] (``rebin``'s output).
      halves: ``half_groups(fan_geometries(...), N)``.

    Returns:
      {"x1", "x2", "x_est"}: [S, H, W] float32 each.
    """
    x1 = np.asarray(rb.reconstruct(sinograms, halves[0], window))
    x2 = np.asarray(rb.reconstruct(sinograms, halves[1], window))
    return {"x1": x1, "x2": x2, "x_est": 0.5 * (x1 + x2)}


def reconstruct_slices(quarter: ctpd.ProjectionIndex, z_mm: Sequence[float], image: ImageGrid,
                       full: ctpd.ProjectionIndex | None = None,
                       keys: Sequence[str] = PROJECTION_KEYS, ffs: str = "native",
                       window: str = "hann", progress: bool | None = False
                       ) -> Iterator[dict[str, np.ndarray]]:
    """x1, x2, x_est (quarter dose) and x_full (full dose) of each slice, in HU (module docstring).

    Reads, one slice at a time, only the views that slice needs (memory: about one rotation of
    projections per series).

    Args:
      quarter: the quarter-dose series (``ctpd.index_series``).
      z_mm: slice positions, mm, inside ``rebin.slice_range_mm(quarter.scan)``.
      image: the reconstruction grid.
      full: the full-dose series of the same scan (``ctpd.check_pair`` is applied), needed for
        "x_full".
      keys: which of x1, x2, x_est, x_full to make.
      ffs: flying-focal-spot handling of ``rebin`` ("native": each focal spot its own source).
      window: FBP filter window ("hann": the paper's).
      progress: a progress bar while reading views (None: only for many views at once).

    Yields:
      per slice, {key: [H, W] float32 HU}.
    """
    unknown = sorted(set(keys) - set(PROJECTION_KEYS))
    if unknown:
        raise ValueError(f"reconstruct_slices: cannot make {unknown}; choose from "
                         f"{PROJECTION_KEYS}.")
    if FULL_DOSE_KEY in keys:
        if full is None:
            raise ValueError("reconstruct_slices: x_full needs the full-dose series (full=...).")
        ctpd.check_pair(full, quarter)
    scan = quarter.scan
    groups = rb.fan_geometries(scan, image, ffs)
    halves = half_groups(groups, scan.views_per_rotation)
    need_halves = any(k in keys for k in QUARTER_DOSE_KEYS)
    caches: dict[str, dict] = {"quarter": {}, "full": {}}
    for z in z_mm:
        views = rb.views_needed(scan, [float(z)])
        out: dict[str, np.ndarray] = {}
        if need_halves:
            projections = _views_of(quarter, caches["quarter"], views, progress)
            sinogram = rb.rebin(projections, scan, views, [float(z)], ffs)
            images = quarter_dose_images(sinogram, halves, window)
            out.update({k: quarter.hu(images[k][0]).astype(np.float32) for k in keys
                        if k in images})
        if FULL_DOSE_KEY in keys:
            projections = _views_of(full, caches["full"], views, progress)
            sinogram = rb.rebin(projections, full.scan, views, [float(z)], ffs)
            mu = np.asarray(rb.reconstruct(sinogram, groups, window))[0]
            out[FULL_DOSE_KEY] = full.hu(mu).astype(np.float32)
        yield out
