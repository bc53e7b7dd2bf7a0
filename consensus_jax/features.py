"""The one TFRecord/TFDS feature schema, imported by the dataset writers and the reader.

CT (``ct_features``), images [H, W, 1] float32 in HU / 1000:
  x1, x2    FBP of the odd and even quarter-dose views (x + n1, x + n2); with K = num_splits
            subsets, x1 .. xK: xk is the FBP of the views v with v mod K = k - 1.
  x_est     quarter-dose FBP of all views (Eq. 11's estimate; Noise2clean's input).
  x_full    full-dose FBP (the paper's reference, itself noisy).
  x_clean   FBP of the noiseless projections, same geometry and filter (clean at the
            reconstruction's resolution).
  x_true    the source image on the reconstruction grid.
MRI (``mri_features``), images [H, W, 2] float32 (real, imaginary), divided by ``scale``:
  x1, x2    zero-filled, amplified halves of the split k-space lines; with K = num_splits
            subsets, x1 .. xK, the K parts of a random partition of the outer lines.
  x_est     SENSE of the 4x data (Eq. 11's estimate).
  x_zf      plain zero-filling of the 4x data (Noise2clean's input).
  x_ref     fully sampled, coil-combined image (the reference).
  x_clean   noiseless fully sampled image (simulations; equal to x_ref for measured data).
  scale     the per-slice factor every image was divided by (maps x_est into [-1, 1]).
  mask      [W] uint8, the 4x sampling mask along the phase-encode axis (the lines the halves,
            x_est and x_zf use).
  Validation slices only (empty, with 0 lines and 0 coils, on training and test slices): the
  k-space lines no network sees, for the k-space validation criterion (docs/validation.md):
  heldout_lines   [L] int32, ky columns measured but kept out of the halves, x_est and x_zf.
  heldout_kspace  [C, H, L, 2] float32, the measured multi-coil k-space on them (real,
                  imaginary), divided by ``scale``: the images' units under consensus_jax.mri.fft.
  maps            [C, H, W, 2] float32, the coil maps every image of the slice was combined with.
Both: patient (text id), patient_id (int index), slice_index (int, position in the volume).
K = 2 (the paper's halves) gives exactly the schema of datasets written before K was a setting.
"""

from __future__ import annotations

import numpy as np

CT_IMAGE_KEYS = ("x1", "x2", "x_est", "x_full", "x_clean", "x_true")
MRI_IMAGE_KEYS = ("x1", "x2", "x_est", "x_zf", "x_ref", "x_clean")
#: The images of each modality that are not split reconstructions.
CT_REFERENCE_KEYS = CT_IMAGE_KEYS[2:]
MRI_REFERENCE_KEYS = MRI_IMAGE_KEYS[2:]


def split_keys(num_splits: int) -> tuple[str, ...]:
    """The features of the K split reconstructions: ("x1", ..., "xK")."""
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 2:
        raise ValueError(f"num_splits={num_splits!r}: a measurement is split into an integer "
                         "K >= 2 parts (the paper's halves: 2).")
    return tuple(f"x{k + 1}" for k in range(num_splits))


def image_keys(modality: str, num_splits: int = 2) -> tuple[str, ...]:
    """Image features of a slice: x1 .. xK, then the modality's estimates and references
    (K = 2: ``CT_IMAGE_KEYS`` / ``MRI_IMAGE_KEYS``)."""
    rest = {"ct": CT_REFERENCE_KEYS, "mri": MRI_REFERENCE_KEYS}.get(modality)
    if rest is None:
        raise ValueError(f"modality must be 'ct' or 'mri', got {modality!r}.")
    return (*split_keys(num_splits), *rest)


def _split_doc(modality: str, k: int, num_splits: int) -> str:
    """The doc string of feature x{k} (k from 1); K = 2 keeps the paper's halves' docs."""
    if modality == "ct":
        if num_splits == 2:
            return f"FBP of the {('odd', 'even')[k - 1]} quarter-dose views, HU/1000"
        return f"FBP of the quarter-dose views v with v mod {num_splits} = {k - 1}, HU/1000"
    if num_splits == 2:
        return f"zero-filled amplified half {k} (real, imag) / scale"
    return f"zero-filled amplified subset {k} of {num_splits} (real, imag) / scale"


#: The held-out k-space features of MRI validation slices (ragged: L lines, C coils per slice).
MRI_HELDOUT_KEYS = ("heldout_lines", "heldout_kspace", "maps")


def _channels(x: np.ndarray) -> np.ndarray:
    return np.stack([x.real, x.imag], axis=-1).astype(np.float32)


def mri_heldout_example(height_px: int, width_px: int, heldout: np.ndarray | None = None,
                        kspace: np.ndarray | None = None, maps: np.ndarray | None = None
                        ) -> dict[str, np.ndarray]:
    """The held-out features of one slice.

    Args:
      height_px, width_px: the slice's size.
      heldout: bool/uint8 [W], the held-out lines; None for a training or test slice (0 lines).
      kspace: complex [C, H, W], the measured k-space / scale (only the held-out columns are read).
      maps: complex [C, H, W], the coil maps.
    """
    if heldout is None:
        return {"heldout_lines": np.zeros(0, np.int32),
                "heldout_kspace": np.zeros((0, height_px, 0, 2), np.float32),
                "maps": np.zeros((0, height_px, width_px, 2), np.float32)}
    lines = np.flatnonzero(np.asarray(heldout)).astype(np.int32)
    return {"heldout_lines": lines,
            "heldout_kspace": _channels(np.asarray(kspace)[..., lines]),
            "maps": _channels(np.asarray(maps))}


def stack_heldout(columns: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-slice held-out features -> arrays over the slices, padded with zeros to the most lines
    and coils of any slice, and ``heldout_valid`` float32 [S, C, L]: 1 on a measured (coil,
    line), 0 on padding. Padded maps are 0, so padded coils predict 0 against 0."""
    lines, kspace, maps = (columns[k] for k in MRI_HELDOUT_KEYS)
    num_slices = len(lines)
    max_l = max(len(v) for v in lines)
    max_c = max(m.shape[0] for m in maps)
    h, w = maps[0].shape[1:3]
    out = {"heldout_lines": np.zeros((num_slices, max_l), np.int32),
           "heldout_kspace": np.zeros((num_slices, max_c, h, max_l, 2), np.float32),
           "maps": np.zeros((num_slices, max_c, h, w, 2), np.float32),
           "heldout_valid": np.zeros((num_slices, max_c, max_l), np.float32)}
    for i, (li, ki, mi) in enumerate(zip(lines, kspace, maps, strict=True)):
        c, n = ki.shape[0], len(li)
        out["heldout_lines"][i, :n] = li
        out["heldout_kspace"][i, :c, :, :n] = ki
        out["maps"][i, :mi.shape[0]] = mi
        out["heldout_valid"][i, :c, :n] = 1.0
    return out


def _common(tfds):
    return {
        "patient": tfds.features.Text(doc="Patient identifier (folder name or virtual seed)."),
        "patient_id": tfds.features.Scalar(np.int64, doc="Patient index within the dataset."),
        "slice_index": tfds.features.Scalar(np.int64, doc="Slice position within the volume."),
    }


def ct_features(size_px: int, num_splits: int = 2):
    """FeaturesDict of a CT slice of ``size_px`` x ``size_px`` with ``num_splits`` subsets."""
    import tensorflow_datasets as tfds

    img = lambda doc: tfds.features.Tensor(shape=(size_px, size_px, 1), dtype=np.float32, doc=doc)
    docs = {
        **{key: _split_doc("ct", k + 1, num_splits)
           for k, key in enumerate(split_keys(num_splits))},
        "x_est": "quarter-dose FBP of all views, HU/1000",
        "x_full": "full-dose FBP of all views, HU/1000",
        "x_clean": "FBP of the noiseless projections, HU/1000",
        "x_true": "source image on the reconstruction grid, HU/1000",
    }
    return tfds.features.FeaturesDict({**{k: img(docs[k])
                                          for k in image_keys("ct", num_splits)},
                                       **_common(tfds)})


def mri_features(height_px: int, width_px: int, num_splits: int = 2):
    """FeaturesDict of an MRI slice of ``height_px`` x ``width_px`` (phase encode along W) with
    ``num_splits`` subsets of the sampled lines."""
    import tensorflow_datasets as tfds

    img = lambda doc: tfds.features.Tensor(shape=(height_px, width_px, 2), dtype=np.float32,
                                           doc=doc)
    docs = {
        **{key: _split_doc("mri", k + 1, num_splits)
           for k, key in enumerate(split_keys(num_splits))},
        "x_est": "SENSE of the 4x data / scale",
        "x_zf": "zero-filling of the 4x data / scale",
        "x_ref": "fully sampled coil-combined image / scale",
        "x_clean": "noiseless fully sampled image / scale",
    }
    return tfds.features.FeaturesDict({
        **{k: img(docs[k]) for k in image_keys("mri", num_splits)},
        "scale": tfds.features.Scalar(np.float32, doc="per-slice normalisation factor"),
        "mask": tfds.features.Tensor(shape=(width_px,), dtype=np.uint8, doc="4x line mask"),
        "heldout_lines": tfds.features.Tensor(
            shape=(None,), dtype=np.int32, doc="validation: held-out ky columns [L]"),
        "heldout_kspace": tfds.features.Tensor(
            shape=(None, height_px, None, 2), dtype=np.float32, encoding="zlib",
            doc="validation: measured k-space on the held-out lines / scale [C, H, L, 2]"),
        "maps": tfds.features.Tensor(
            shape=(None, height_px, width_px, 2), dtype=np.float32, encoding="zlib",
            doc="validation: the coil maps of the slice [C, H, W, 2]"),
        **_common(tfds),
    })
