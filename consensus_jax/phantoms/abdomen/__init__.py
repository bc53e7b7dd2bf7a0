"""Procedural abdomen-like virtual patients: the built-in stand-in for the LDCT Grand Challenge.

The LDCT Grand Challenge data are contrast-enhanced (portal-venous) abdomen CT, 10 patients, read in
the liver window [-160, 240] HU. This package draws comparable slices from a seed: a patient is a
seed that fixes body size and shape, fat and muscle thickness, organ layout, vessel trees, bowel
loops and liver lesions; a slice is that patient cut at ``z = slice_index * slice_spacing_mm``.

Conventions
- Images are [H, W] float32 in HU, rows top to bottom = anterior to posterior (patient supine),
  columns left to right = patient's right to patient's left (radiological convention: the liver is
  on the LEFT of the image, the spleen and stomach on the right).
- Geometry is defined in mm, centred on the image centre: pixel (row, col) has centre
  ``x = (col - (W - 1) / 2) * pixel_size_mm``, ``y = (row - (H - 1) / 2) * pixel_size_mm``. The same
  patient at 128 px x 2.97 mm and at 512 px x 0.742 mm shows the same anatomy at the same place.
- z runs from head to feet over about ``ABDOMEN_LENGTH_MM`` (liver dome to below the kidneys);
  organs change size and position smoothly with z, so neighbouring slices are correlated.
- Each pixel value is the pixel-area average of a continuous object: edges are soft over one pixel
  (plus a sub-millimetre physical blur) and the tissue texture (band-limited Gaussian random fields,
  correlation lengths 1.2-5 mm) is integrated over the pixel exactly, so a coarse slice approximates
  the block average of a fine one and nothing is aliased.

``abdomen_slice(..., return_meta=True)`` also gives a label map (dominant tissue per pixel, names in
``LABEL_NAMES``), a point deep inside each tissue, and the lesions the slice cuts (centres and radii
in pixels) for figures and region statistics; ``liver_lesions`` lists a patient's lesions in mm.
Building a patient costs about as much as rendering a small slice, so ``virtual_patient`` (built
once) is the fast way to many slices (timings: docs/EXPERIMENTS.md).

Modules: ``shapes`` (signed distances, tubes), ``texture`` (tissue texture fields), ``body`` (the
outline and wall), ``anatomy`` (a patient drawn from a seed), ``canvas`` and ``render`` (painting
one slice), ``patient`` (this public API).
"""

from consensus_jax.phantoms.abdomen.anatomy import Lesion
from consensus_jax.phantoms.abdomen.body import ABDOMEN_LENGTH_MM, MAX_BODY_RADIUS_MM
from consensus_jax.phantoms.abdomen.canvas import AIR_HU, LABEL_NAMES
from consensus_jax.phantoms.abdomen.patient import (
    FOV_MM,
    LIVER_WINDOW_HU,
    MIN_FOV_MM,
    SLICE_SPACING_MM,
    LesionSection,
    SliceMeta,
    abdomen_slice,
    default_pixel_size_mm,
    liver_lesions,
    save_preview_png,
    virtual_patient,
)

__all__ = [
    "ABDOMEN_LENGTH_MM",
    "AIR_HU",
    "FOV_MM",
    "LABEL_NAMES",
    "LIVER_WINDOW_HU",
    "MAX_BODY_RADIUS_MM",
    "MIN_FOV_MM",
    "SLICE_SPACING_MM",
    "Lesion",
    "LesionSection",
    "SliceMeta",
    "abdomen_slice",
    "default_pixel_size_mm",
    "liver_lesions",
    "save_preview_png",
    "virtual_patient",
]
