"""Property-based tests (hypothesis) of the readers and the config validation: whatever the
input, only the project's own errors (consensus_jax.errors.UserError) escape; a reader either
returns finite data of the documented shape or refuses with one of them.

CI runs the "ci" profile (a few dozen examples per property, well under a minute in all). A long
campaign runs thousands:

    HYPOTHESIS_PROFILE=campaign .venv/bin/python -m pytest tests/test_properties.py
"""

from __future__ import annotations

import io as bytes_io
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from configs import tiny
from consensus_jax import experiment, methods, train_lib
from consensus_jax.ct import io as ct_io
from consensus_jax.errors import ConfigError, UserError
from consensus_jax.mri import fastmri

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("campaign", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="property-"))


# --- DICOM ------------------------------------------------------------------------------------

_CT_BYTES = Path(get_testdata_file("CT_small.dcm")).read_bytes()


@st.composite
def damaged_dicom(draw) -> bytes:
    """pydicom's CT slice cut short, with bytes overwritten, or both."""
    data = bytearray(_CT_BYTES)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut] if cut is not None else data)


@given(files=st.lists(damaged_dicom(), min_size=1, max_size=3))
def test_dicom_reader_returns_hu_or_refuses(files):
    folder = _scratch()
    for i, data in enumerate(files):
        (folder / f"slice{i}.dcm").write_bytes(data)
    try:
        volume = ct_io.read_dicom_series(folder)
    except UserError:
        return
    assert volume.hu.ndim == 3 and np.isfinite(volume.hu).all()


@given(data=st.binary(max_size=2048))
def test_dicom_reader_on_arbitrary_bytes(data):
    folder = _scratch()
    (folder / "file.dcm").write_bytes(b"\0" * 128 + b"DICM" + data)
    with pytest.raises(UserError):  # nothing here is a CT image
        ct_io.read_dicom_series(folder)


@given(tag=st.sampled_from(["Modality", "Rows", "Columns", "PixelSpacing", "RescaleSlope",
                            "BitsAllocated", "PixelRepresentation", "PixelData",
                            "ImagePositionPatient", "SamplesPerPixel"]),
       value=st.one_of(st.none(), st.integers(-70000, 70000), st.floats(allow_nan=True),
                       st.text(max_size=8)))
def test_dicom_reader_with_one_tag_changed(tag, value):
    folder = _scratch()
    ds = pydicom.dcmread(bytes_io.BytesIO(_CT_BYTES))
    try:
        if value is None:
            delattr(ds, tag)
        else:
            setattr(ds, tag, value)
        ds.save_as(folder / "slice.dcm")
    except Exception:  # noqa: BLE001 - pydicom refuses to write this value: nothing to read
        return
    try:
        volume = ct_io.read_dicom_series(folder)
    except UserError:
        return
    assert np.isfinite(volume.hu).all()


# --- NumPy ------------------------------------------------------------------------------------

_DTYPES = st.sampled_from([np.float32, np.float64, np.int16, np.uint8, np.bool_, np.complex64])


@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=4), dtype=_DTYPES,
       fill=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5000, 5000)),
       ramp=st.booleans())
def test_numpy_reader_returns_hu_or_refuses(shape, dtype, fill, ramp):
    path = _scratch() / "stack.npy"
    with np.errstate(all="ignore"):
        array = np.full(shape, fill).astype(dtype)
        if ramp and array.size:
            array = (array + np.arange(array.size).reshape(array.shape) * 100).astype(dtype)
    np.save(path, array)
    try:
        volume = ct_io.read_numpy_stack(path)
    except UserError:
        return
    assert volume.hu.ndim == 3 and volume.hu.dtype == np.float32
    assert np.isfinite(volume.hu).all()


@given(names=st.lists(st.sampled_from(["hu", "x", "pixel_size_mm", "y"]), unique=True,
                      max_size=3),
       pixel=st.one_of(st.floats(allow_nan=True), st.just(np.zeros(2))))
def test_numpy_reader_npz_keys(names, pixel):
    path = _scratch() / "stack.npz"
    arrays = {n: (np.asarray(pixel) if n == "pixel_size_mm"
                  else np.linspace(-1000, 500, 2 * 8 * 8).reshape(2, 8, 8)) for n in names}
    np.savez(path, **arrays)
    try:
        volume = ct_io.read_numpy_stack(path)
    except UserError:
        return
    assert volume.pixel_size_mm is None or volume.pixel_size_mm > 0


# --- HDF5 (fastMRI) ---------------------------------------------------------------------------

@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=5),
       complex_=st.booleans(),
       header=st.one_of(st.none(), st.just("<ismrmrdHeader/>"),
                        st.text(st.characters(exclude_characters="\x00",
                                              exclude_categories=("Cs",)), max_size=40)),
       value=st.sampled_from([0.0, 1.0, np.nan, np.inf]))
def test_fastmri_reader_returns_kspace_or_refuses(shape, complex_, header, value):
    path = _scratch() / "file.h5"
    with h5py.File(path, "w") as f:
        data = np.full(shape, value, np.complex64 if complex_ else np.float32)
        f.create_dataset("kspace", data=data)
        if header is not None:
            f["ismrmrd_header"] = header
    try:
        for s in fastmri.read_fastmri_slices(path):
            assert np.isfinite(s.kspace).all()
    except UserError:
        return


# --- config validation ------------------------------------------------------------------------

_VALUES = st.one_of(st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.text(max_size=5), st.none())
_KEYS = ["optim.learning_rate", "train.batch_size", "train.patch_size_px", "train.num_steps",
         "train.patches_per_slice", "train.log_every_steps", "train.checkpoint_every_steps",
         "train.keep_checkpoints", "train.eval_every_steps", "eval.batch_size", "loss.kind",
         "loss.beta_w", "loss.beta_r", "model.param_layout", "optim.schedule"]


@given(changes=st.dictionaries(st.sampled_from(_KEYS), _VALUES, min_size=1, max_size=3))
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_config_validation_only_raises_config_errors(changes):
    config = tiny.get_config()
    for key, value in changes.items():
        group, name = key.split(".")
        try:
            config[group][name] = value
        except TypeError:  # ConfigDict keeps each field's type: the flag parser refuses these
            return
    try:
        experiment.check_config(config)
        method = methods.from_config(config)
        train_lib.make_optimizer(config.optim.learning_rate, config.optim.schedule, 10)
    except ConfigError:
        return
    assert method.kind in methods.KINDS
    assert config.optim.learning_rate > 0 and config.train.batch_size >= 1
    assert all(np.isfinite(b) and b >= 0 for b in (method.beta_w, method.beta_r))
