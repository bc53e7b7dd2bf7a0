"""fastMRI reader on tiny fake multi-coil files written with h5py."""

import h5py
import jax
import numpy as np
import pytest

from consensus_jax.mri.fastmri import (
    center_crop,
    parse_ismrmrd_header,
    read_fastmri_header,
    read_fastmri_slices,
)
from consensus_jax.mri.masks import Undersampling
from consensus_jax.mri.pipeline import ConsensusMRIConfig, consensus_inputs

SLICES, COILS, KX, KY, RECON = 3, 4, 32, 24, 16
# fastMRI's layout: acquired ky columns [y // 2 - centre, y // 2 - centre + maximum + 1) = [2, 22).
KY_CENTER, KY_MAX = 10, 19


def _header(ky=KY, center=KY_CENTER, maximum=KY_MAX, drop=None):
    limits = f"<maximum>{maximum}</maximum><center>{center}</center>"
    if drop == "center":
        limits = f"<maximum>{maximum}</maximum>"
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace><matrixSize><x>{KX}</x><y>{ky}</y><z>1</z></matrixSize></encodedSpace>
    <reconSpace><matrixSize><x>{RECON}</x><y>{RECON}</y><z>1</z></matrixSize></reconSpace>
    <encodingLimits><kspace_encoding_step_1><minimum>0</minimum>{limits}
    </kspace_encoding_step_1></encodingLimits>
  </encoding>
</ismrmrdHeader>"""


def _kspace(shape=(SLICES, COILS, KX, KY)):
    rng = np.random.default_rng(0)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    k[..., :2] = 0  # zero-padded phase-encode edges, as in fastMRI knee files
    k[..., 22:] = 0
    return k


def _write(path, kspace=None, header=None, skip=()):
    kspace = _kspace() if kspace is None else kspace
    with h5py.File(path, "w") as f:
        if "kspace" not in skip:
            f.create_dataset("kspace", data=kspace)
        if "ismrmrd_header" not in skip:
            f["ismrmrd_header"] = _header() if header is None else header
        f.create_dataset("reconstruction_rss", data=np.zeros((len(kspace), RECON, RECON)))
    return path


def _numpy_crop(k):
    img = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(k, axes=-2), axis=-2, norm="ortho"),
                          axes=-2)
    start = (KX - RECON) // 2
    img = img[..., start:start + RECON, :]
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(img, axes=-2), axis=-2, norm="ortho"),
                           axes=-2)


def test_reads_slices_one_at_a_time_with_readout_crop(tmp_path):
    path = _write(tmp_path / "file1000000.h5")
    header, num, shape = read_fastmri_header(path)
    assert num == SLICES and shape == (SLICES, COILS, KX, KY)
    assert header.encoded_matrix == (KX, KY, 1) and header.recon_matrix == (RECON, RECON, 1)
    assert header.acquired_columns == (2, 22)
    kspace = _kspace()
    read = list(read_fastmri_slices(path))
    assert [s.index for s in read] == [0, 1, 2]
    for s in read:
        assert s.kspace.shape == (COILS, RECON, KY) and s.kspace.dtype == np.complex64
        np.testing.assert_allclose(s.kspace, _numpy_crop(kspace[s.index]), atol=1e-5)
        assert s.acquired == (2, 22)
    only = list(read_fastmri_slices(path, slices=[2], crop=False))
    np.testing.assert_array_equal(only[0].kspace, kspace[2])


def test_read_slice_feeds_the_pipeline_without_sampling_padding(tmp_path):
    path = _write(tmp_path / "file.h5")
    s = next(read_fastmri_slices(path))
    config = ConsensusMRIConfig(undersampling=Undersampling(4.0, 4), sense_iterations=5)
    out = consensus_inputs(s.kspace, jax.random.key(0), config, acquired=s.acquired)
    mask = np.asarray(out["mask"])
    assert not mask[:2].any() and not mask[22:].any() and mask[10:14].all()
    assert out["x1"].shape == (RECON, KY, 2)
    assert center_crop(out["x_ref"][..., 0], (RECON, RECON)).shape == (RECON, RECON)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        read_fastmri_slices(tmp_path / "nope.h5")
    bad = tmp_path / "text.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        read_fastmri_slices(bad)


@pytest.mark.parametrize("name, kwargs, match", [
    ("nokspace", {"skip": ("kspace",)}, "'kspace' is missing"),
    ("noheader", {"skip": ("ismrmrd_header",)}, "'ismrmrd_header' is missing"),
    ("threed", {"kspace": _kspace()[:, 0]}, "expected 4-D"),
    ("real", {"kspace": _kspace().real}, "expected complex"),
    ("empty", {"kspace": np.zeros((0, COILS, KX, KY), np.complex64)}, "no slices"),
    ("nocentre", {"header": _header(drop="center")}, "kspace_encoding_step_1/center"),
    ("badky", {"header": _header(ky=30)}, "encodedSpace y = 30"),
    ("limits", {"header": _header(center=2, maximum=40)}, "outside the encoded matrix"),
    ("xml", {"header": "<ismrmrdHeader><encoding>"}, "not valid XML"),
])
def test_bad_files_raise_clear_errors(tmp_path, name, kwargs, match):
    path = _write(tmp_path / f"{name}.h5", **kwargs)
    # Errors come from the call itself, before any slice is requested.
    with pytest.raises(ValueError, match=match):
        read_fastmri_slices(path)


@pytest.mark.parametrize("damage, words", [("nan", "NaN/inf values"), ("zero", "all zeros")])
def test_damaged_slices_are_refused_by_name(tmp_path, damage, words):
    k = _kspace()
    k[1] = np.nan if damage == "nan" else 0
    path = _write(tmp_path / "f.h5", kspace=k)
    with pytest.raises(ValueError, match=f"slice 1 k-space .*{words}"):
        list(read_fastmri_slices(path))


def test_bad_slice_index_and_header_text(tmp_path):
    path = _write(tmp_path / "file.h5")
    with pytest.raises(ValueError, match=r"slice indices \[3\]"):
        read_fastmri_slices(path, slices=[0, 3])
    header = parse_ismrmrd_header(_header().encode())
    assert (header.ky_center, header.ky_maximum) == (KY_CENTER, KY_MAX)
