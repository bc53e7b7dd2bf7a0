"""The public API of the virtual abdomen: slices and volumes of a patient, lesions, previews."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from consensus_jax.phantoms.abdomen.anatomy import Anatomy, Lesion, make_anatomy
from consensus_jax.phantoms.abdomen.canvas import LABEL_NAMES
from consensus_jax.phantoms.abdomen.render import render

FOV_MM = 380.0
SLICE_SPACING_MM = 3.0
LIVER_WINDOW_HU = (-160.0, 240.0)
MIN_FOV_MM = 360.0


@dataclasses.dataclass(frozen=True)
class LesionSection:
    """The cross-section of a lesion in one slice: centre (row, col) and radius in pixels."""

    lesion_index: int
    centre_px: tuple[float, float]
    radius_px: float
    radius_mm: float
    contrast_hu: float


@dataclasses.dataclass(frozen=True, eq=False)
class SliceMeta:
    """What is where in one slice.

    labels: [H, W] uint8 index into ``LABEL_NAMES``: the tissue covering most of each pixel.
    organ_centres_px: tissue name -> (row, col) of its pixel deepest inside that tissue's label.
    lesions: the lesions this slice cuts (empty for most slices).
    """

    patient_seed: int
    slice_index: int
    z_mm: float
    pixel_size_mm: float
    labels: np.ndarray
    organ_centres_px: dict[str, tuple[int, int]]
    lesions: tuple[LesionSection, ...]


def default_pixel_size_mm(size_px: int) -> float:
    """Pixel size (mm) that puts ``size_px`` pixels across the default ``FOV_MM`` field of view."""
    return FOV_MM / size_px


def _check_args(patient_seed: int, size_px: int, pixel_size_mm: float, slice_spacing_mm: float,
                lesion_contrast_hu: tuple[float, float],
                lesion_diameter_mm: tuple[float, float]) -> None:
    if int(patient_seed) != patient_seed or patient_seed < 0:
        raise ValueError(f"patient_seed={patient_seed!r} must be a non-negative integer.")
    if size_px < 8:
        raise ValueError(f"size_px={size_px} is too small; use at least 8 (tests use 64).")
    if not pixel_size_mm > 0 or size_px * pixel_size_mm < MIN_FOV_MM:
        raise ValueError(
            f"pixel_size_mm={pixel_size_mm} with size_px={size_px} gives a field of view of "
            f"{size_px * pixel_size_mm:.1f} mm; the virtual patients are up to ~345 mm wide, so "
            f"use a field of view of at least {MIN_FOV_MM:.0f} mm, e.g. "
            f"pixel_size_mm=default_pixel_size_mm(size_px) = {default_pixel_size_mm(size_px):.4g}.")
    if not slice_spacing_mm > 0:
        raise ValueError(f"slice_spacing_mm={slice_spacing_mm} must be positive (mm).")
    lo, hi = lesion_contrast_hu
    if not -200.0 <= lo <= hi <= 200.0:
        raise ValueError(f"lesion_contrast_hu={lesion_contrast_hu} must be an increasing (low, "
                         "high) pair in [-200, 200] HU relative to the liver, e.g. (-40, -10).")
    lo, hi = lesion_diameter_mm
    if not 0.5 <= lo <= hi <= 30.0:
        raise ValueError(f"lesion_diameter_mm={lesion_diameter_mm} must be an increasing (low, "
                         "high) pair in [0.5, 30] mm, e.g. (2, 10).")


def _organ_centres(labels: np.ndarray) -> dict[str, tuple[int, int]]:
    from scipy import ndimage

    centres = {}
    for idx in np.unique(labels):
        if idx == 0:
            continue
        mask = labels == idx
        rows, cols = np.nonzero(mask)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        depth = ndimage.distance_transform_edt(np.pad(mask[r0:r1, c0:c1], 1))[1:-1, 1:-1]
        r, c = np.unravel_index(np.argmax(depth), depth.shape)
        centres[LABEL_NAMES[idx]] = (int(r0 + r), int(c0 + c))
    return centres


def _slice_meta(anat: Anatomy, seed: int, index: int, z_mm: float, size_px: int,
                pixel_mm: float, labels: np.ndarray) -> SliceMeta:
    half = (size_px - 1) / 2.0
    sections = []
    for i, les in enumerate(anat.lesions):
        dz = z_mm - les.centre_mm[2]
        if abs(dz) < les.radius_mm:
            rho = math.sqrt(les.radius_mm ** 2 - dz ** 2)
            sections.append(LesionSection(
                lesion_index=i, centre_px=(les.centre_mm[1] / pixel_mm + half,
                                           les.centre_mm[0] / pixel_mm + half),
                radius_px=rho / pixel_mm, radius_mm=rho, contrast_hu=les.contrast_hu))
    return SliceMeta(seed, index, z_mm, pixel_mm, labels, _organ_centres(labels),
                     tuple(sections))


def liver_lesions(patient_seed: int, *, lesion_contrast_hu: tuple[float, float] = (-40.0, -10.0),
                  lesion_diameter_mm: tuple[float, float] = (2.0, 10.0)) -> tuple[Lesion, ...]:
    """All liver lesions of a virtual patient (centres and radii in mm, contrast in HU).

    Slice ``i`` (at ``z = i * slice_spacing_mm``) cuts lesion L when
    ``abs(z - L.centre_mm[2]) < L.radius_mm``.
    """
    _check_args(patient_seed, 64, FOV_MM / 64, SLICE_SPACING_MM, lesion_contrast_hu,
                lesion_diameter_mm)
    return make_anatomy(patient_seed, lesion_contrast_hu, lesion_diameter_mm).lesions


def abdomen_slice(patient_seed: int, slice_index: int, size_px: int, pixel_size_mm: float, *,
                  slice_spacing_mm: float = SLICE_SPACING_MM,
                  lesion_contrast_hu: tuple[float, float] = (-40.0, -10.0),
                  lesion_diameter_mm: tuple[float, float] = (2.0, 10.0),
                  return_meta: bool = False) -> np.ndarray | tuple[np.ndarray, SliceMeta]:
    """One axial slice of virtual patient ``patient_seed``: [size_px, size_px] float32 in HU.

    The slice lies at ``z = slice_index * slice_spacing_mm`` (mm, head to feet); the anatomy is
    designed for z in [0, ABDOMEN_LENGTH_MM] (liver dome to below the kidneys) and continues
    smoothly (mostly bowel) beyond it. Lesion contrasts (HU relative to liver) and diameters (mm)
    are drawn uniformly from the given ranges; changing them leaves the rest of the patient
    unchanged. With ``return_meta`` also returns a ``SliceMeta`` (labels, organ centres, lesions).
    """
    _check_args(patient_seed, size_px, pixel_size_mm, slice_spacing_mm, lesion_contrast_hu,
                lesion_diameter_mm)
    if slice_index < 0:
        raise ValueError(f"slice_index={slice_index} must be >= 0 (slice 0 is the liver dome).")
    anat = make_anatomy(patient_seed, lesion_contrast_hu, lesion_diameter_mm)
    z_mm = slice_index * slice_spacing_mm
    image, labels = render(anat, z_mm, size_px, pixel_size_mm, return_meta)
    if not return_meta:
        return image
    return image, _slice_meta(anat, patient_seed, slice_index, z_mm, size_px, pixel_size_mm,
                              labels)


def virtual_patient(patient_seed: int, num_slices: int, size_px: int, pixel_size_mm: float, *,
                    slice_spacing_mm: float = SLICE_SPACING_MM,
                    lesion_contrast_hu: tuple[float, float] = (-40.0, -10.0),
                    lesion_diameter_mm: tuple[float, float] = (2.0, 10.0),
                    return_meta: bool = False,
                    slice_indices: Sequence[int] | None = None,
                    ) -> np.ndarray | tuple[np.ndarray, list[SliceMeta]]:
    """Slices 0..num_slices-1 of one virtual patient: [S, size_px, size_px] float32 in HU.

    Identical to stacking ``abdomen_slice(patient_seed, i, ...)``; the patient is built once.
    ``slice_indices`` (each in 0..num_slices-1) renders only those slices, in that order.
    """
    _check_args(patient_seed, size_px, pixel_size_mm, slice_spacing_mm, lesion_contrast_hu,
                lesion_diameter_mm)
    if num_slices < 1:
        raise ValueError(f"num_slices={num_slices} must be at least 1.")
    anat = make_anatomy(patient_seed, lesion_contrast_hu, lesion_diameter_mm)
    indices = range(num_slices) if slice_indices is None else [int(i) for i in slice_indices]
    if any(not 0 <= i < num_slices for i in indices):
        raise ValueError(f"slice_indices {list(indices)} must lie in 0..{num_slices - 1}.")
    images, metas = [], []
    for i in indices:
        z_mm = i * slice_spacing_mm
        image, labels = render(anat, z_mm, size_px, pixel_size_mm, return_meta)
        images.append(image)
        if return_meta:
            metas.append(_slice_meta(anat, patient_seed, i, z_mm, size_px, pixel_size_mm,
                                     labels))
    volume = np.stack(images)
    return (volume, metas) if return_meta else volume


def save_preview_png(path: str | Path, images: np.ndarray | Sequence[np.ndarray], *,
                     window_hu: tuple[float, float] = LIVER_WINDOW_HU,
                     titles: Sequence[str] | None = None, columns: int = 4) -> None:
    """Save HU images ([H, W], [N, H, W] or a list of [H, W]) as a PNG grid in a CT window.

    The default window is the liver window [-160, 240] HU used by the LDCT Grand Challenge.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    images = [np.asarray(im) for im in images]
    if not images or any(im.ndim != 2 for im in images):
        raise ValueError(f"images must be [H, W], [N, H, W] or a list of [H, W] arrays; got "
                         f"shapes {[im.shape for im in images]}.")
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(4.0 * cols, 4.0 * rows), dpi=max(100, images[0].shape[0] // 4))
    FigureCanvasAgg(fig)
    for i, im in enumerate(images):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(im, cmap="gray", vmin=window_hu[0], vmax=window_hu[1],
                  interpolation="nearest")
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    fig.savefig(Path(path))
