"""The one TFRecord/TFDS feature schema, imported by the dataset writers and the reader.

CT (``ct_features``), images [H, W, 1] float32 in HU / 1000:
  x1, x2    FBP of the odd and even quarter-dose views (x + n1, x + n2).
  x_est     quarter-dose FBP of all views (Eq. 11's estimate; Noise2clean's input).
  x_full    full-dose FBP (the paper's reference, itself noisy).
  x_clean   FBP of the noiseless projections, same geometry and filter (clean at the
            reconstruction's resolution).
  x_true    the source image on the reconstruction grid.
MRI (``mri_features``), images [H, W, 2] float32 (real, imaginary), divided by ``scale``:
  x1, x2    zero-filled, amplified halves of the split k-space lines.
  x_est     SENSE of the 4x data (Eq. 11's estimate).
  x_zf      plain zero-filling of the 4x data (Noise2clean's input).
  x_ref     fully sampled, coil-combined image (the reference).
  x_clean   noiseless fully sampled image (simulations; equal to x_ref for measured data).
  scale     the per-slice factor every image was divided by (maps x_est into [-1, 1]).
  mask      [W] uint8, the 4x sampling mask along the phase-encode axis.
Both: patient (text id), patient_id (int index), slice_index (int, position in the volume).
"""

from __future__ import annotations

import numpy as np

CT_IMAGE_KEYS = ("x1", "x2", "x_est", "x_full", "x_clean", "x_true")
MRI_IMAGE_KEYS = ("x1", "x2", "x_est", "x_zf", "x_ref", "x_clean")


def _common(tfds):
    return {
        "patient": tfds.features.Text(doc="Patient identifier (folder name or virtual seed)."),
        "patient_id": tfds.features.Scalar(np.int64, doc="Patient index within the dataset."),
        "slice_index": tfds.features.Scalar(np.int64, doc="Slice position within the volume."),
    }


def ct_features(size_px: int):
    """FeaturesDict of a CT slice of ``size_px`` x ``size_px``."""
    import tensorflow_datasets as tfds

    img = lambda doc: tfds.features.Tensor(shape=(size_px, size_px, 1), dtype=np.float32, doc=doc)
    docs = {
        "x1": "FBP of the odd quarter-dose views, HU/1000",
        "x2": "FBP of the even quarter-dose views, HU/1000",
        "x_est": "quarter-dose FBP of all views, HU/1000",
        "x_full": "full-dose FBP of all views, HU/1000",
        "x_clean": "FBP of the noiseless projections, HU/1000",
        "x_true": "source image on the reconstruction grid, HU/1000",
    }
    return tfds.features.FeaturesDict({**{k: img(docs[k]) for k in CT_IMAGE_KEYS},
                                       **_common(tfds)})


def mri_features(height_px: int, width_px: int):
    """FeaturesDict of an MRI slice of ``height_px`` x ``width_px`` (phase encode along W)."""
    import tensorflow_datasets as tfds

    img = lambda doc: tfds.features.Tensor(shape=(height_px, width_px, 2), dtype=np.float32,
                                           doc=doc)
    docs = {
        "x1": "zero-filled amplified half 1 (real, imag) / scale",
        "x2": "zero-filled amplified half 2 (real, imag) / scale",
        "x_est": "SENSE of the 4x data / scale",
        "x_zf": "zero-filling of the 4x data / scale",
        "x_ref": "fully sampled coil-combined image / scale",
        "x_clean": "noiseless fully sampled image / scale",
    }
    return tfds.features.FeaturesDict({
        **{k: img(docs[k]) for k in MRI_IMAGE_KEYS},
        "scale": tfds.features.Scalar(np.float32, doc="per-slice normalisation factor"),
        "mask": tfds.features.Tensor(shape=(width_px,), dtype=np.uint8, doc="4x line mask"),
        **_common(tfds),
    })
