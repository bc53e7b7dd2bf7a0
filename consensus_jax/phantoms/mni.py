"""Axial slices of the MNI152 T1 template shipped inside the nilearn wheel, as MRI test images.

Optional: needs the ``mri-data`` extra (``pip install .[mri-data]``); nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mni152_slices(size_px: int, slice_indices: Sequence[int] | None = None,
                  num_slices: int = 8) -> np.ndarray:
    """Axial slices of the 1 mm MNI152 T1 template (nilearn wheel), float32 [N, size, size], 0..1.

    Args:
      size_px: output size; the 233 x 197 mm slice is zero-padded to square and resampled.
      slice_indices: axial (z) indices into the 189-slice volume; default ``num_slices`` evenly
        spaced between z = 40 and z = 140 (cerebrum).
      num_slices: used when ``slice_indices`` is None.

    Raises:
      ImportError: nilearn is missing (install the ``mri-data`` extra).
    """
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as err:
        raise ImportError(
            "mni152_slices needs nilearn, which ships the MNI152 template in its wheel: "
            "`pip install .[mri-data]` (or `pip install nilearn`), or use knee_phantom."
        ) from err
    import jax

    volume = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    depth = volume.shape[2]
    if slice_indices is None:
        slice_indices = np.linspace(40, 140, num_slices).round().astype(int)
    bad = [int(z) for z in slice_indices if not 0 <= int(z) < depth]
    if bad:
        raise ValueError(f"slice_indices {bad} lie outside the template's z range [0, {depth}).")
    # RAS volume: rows = anterior (top) to posterior, columns = right to left (radiological).
    slices = np.stack([volume[:, ::-1, int(z)].T for z in slice_indices])
    side = max(slices.shape[1:])
    pad_r, pad_c = side - slices.shape[1], side - slices.shape[2]
    slices = np.pad(slices, ((0, 0), (pad_r // 2, pad_r - pad_r // 2),
                             (pad_c // 2, pad_c - pad_c // 2)))
    out = jax.image.resize(slices, (len(slices), size_px, size_px), method="linear",
                           antialias=True)
    out = np.clip(np.asarray(out), 0.0, None)
    return (out / max(float(out.max()), 1e-12)).astype(np.float32)
