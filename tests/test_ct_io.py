"""CT readers: synthetic DICOM series written with pydicom, pydicom's CT_small.dcm, NumPy stacks,
and resampling checked against scikit-image."""

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid
from skimage.transform import downscale_local_mean, resize

from consensus_jax.ct import io


def write_ct(path, stored, *, z=0.0, instance=1, series="1.2.826.0.1.3680043.8.498.1",
             slope=1.0, intercept=-1024.0, spacing=(0.7, 0.7), modality="CT", drop=(),
             syntax=ExplicitVRLittleEndian, **extra):
    """One CT slice with stored int16 values; tags in `drop` are left out."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 3.0
    ds.ImagePositionPatient = [-100.0, -100.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.astype(np.int16).tobytes()
    else:
        ds.PixelData = encapsulate([b"\x00" * 64])
    for key, value in extra.items():
        setattr(ds, key, value)
    for tag in drop:
        delattr(ds, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_series(folder, hu, z, slope, intercept, names, instances, **kw):
    for k in range(hu.shape[0]):
        stored = np.round((hu[k] - intercept) / slope).astype(np.int16)
        write_ct(folder / names[k], stored, z=z[k], instance=instances[k], slope=slope,
                 intercept=intercept, **kw)


@pytest.fixture
def two_patients(tmp_path):
    rng = np.random.default_rng(0)
    truth = {}
    # Patient A: slope 1, intercept -1024; file names and instance numbers both disagree with z.
    hu_a = rng.integers(-1024, 2000, (5, 12, 16)).astype(np.float32)
    z_a = np.array([-10.0, -7.0, -4.0, -1.0, 2.0])
    perm = np.array([3, 0, 4, 1, 2])
    write_series(tmp_path / "patA", hu_a[perm], z_a[perm], 1.0, -1024.0,
                 [f"img{n}.dcm" for n in (7, 2, 9, 1, 5)], [2, 5, 1, 4, 3])
    truth["patA"] = (hu_a, z_a)
    # Patient B: slope 0.5, intercept -1000 (half-HU steps), no file suffix.
    hu_b = rng.integers(-2000, 3000, (4, 12, 16)).astype(np.float32) * 0.5 - 1000.0
    z_b = np.array([30.0, 33.0, 36.0, 39.0])
    perm = np.array([2, 3, 0, 1])
    write_series(tmp_path / "patB", hu_b[perm], z_b[perm], 0.5, -1000.0,
                 ["IM_A", "IM_B", "IM_C", "IM_D"], [1, 2, 3, 4], series="1.2.3.4.5",
                 spacing=(0.8, 0.8))
    (tmp_path / "patB" / "README.txt").write_text("not a DICOM file")
    truth["patB"] = (hu_b, z_b)
    return tmp_path, truth


def test_reads_patients_sorted_by_position_with_exact_hu(two_patients):
    root, truth = two_patients
    vols = io.read_dicom_patients(root)
    assert sorted(vols) == ["patA", "patB"]
    for pid, (hu, z) in truth.items():
        vol = vols[pid]
        assert vol.patient_id == pid and vol.num_slices == hu.shape[0]
        assert vol.hu.dtype == np.float32
        np.testing.assert_array_equal(vol.hu, hu)
        np.testing.assert_array_equal(vol.slice_positions_mm, z)
        assert vol.slice_thickness_mm == 3.0
    assert vols["patA"].pixel_size_mm == pytest.approx(0.7)
    assert vols["patB"].pixel_size_mm == pytest.approx(0.8)


def test_file_without_preamble_is_read_and_non_dicom_files_are_listed(tmp_path):
    hu = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    write_series(tmp_path / "p", hu, [0.0, 1.0, 2.0], 1.0, 0.0, ["a", "b", "c"], [1, 2, 3])
    bare = tmp_path / "p" / "b"
    bare.write_bytes(bare.read_bytes()[132:])  # no 128-byte preamble and no "DICM" marker
    (tmp_path / "p" / "notes.txt").write_text("not a DICOM file")
    with pytest.warns(UserWarning, match=r"1 file\(s\) are not DICOM and were skipped: notes.txt"):
        vol = io.read_dicom_series(tmp_path / "p")
    np.testing.assert_array_equal(vol.hu, hu)


def test_falls_back_to_instance_number(tmp_path):
    hu = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    write_series(tmp_path / "p", hu[[2, 0, 1]], [0.0, 0.0, 0.0], 1.0, 0.0, ["a", "b", "c"],
                 [3, 1, 2], drop=("ImagePositionPatient",))
    vol = io.read_dicom_patients(tmp_path)["p"]
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.slice_positions_mm is None


def test_reads_pydicom_ct_small(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    shutil.copy(src, tmp_path / "CT_small.dcm")
    vol = io.read_dicom_patients(tmp_path)  # files directly in the root: one patient
    (pid, v), = vol.items()
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept)
    assert pid == tmp_path.name and v.hu.shape == (1, 128, 128)
    np.testing.assert_array_equal(v.hu[0], expected.astype(np.float32))
    assert v.pixel_size_mm == pytest.approx(0.661468)
    assert v.slice_thickness_mm == pytest.approx(5.0)
    assert -1000 < v.hu.min() < -800 and v.hu.max() > 1000


def _ramp(shape):
    """Stored values of a slice that holds an image (not one value everywhere)."""
    return np.arange(np.prod(shape)).reshape(shape).astype(np.int16)


def one_good(folder, name="ok.dcm", **kw):
    write_ct(folder / name, _ramp((4, 4)), **kw)


@pytest.mark.parametrize("case, kw, words", [
    ("modality", {"modality": "MR"}, ["Modality", "'MR'", "Remove non-CT"]),
    ("compressed", {"syntax": JPEGLSLossless}, ["JPEG-LS", "pip install", "gdcm"]),
    ("series", {"series": "9.9.9"}, ["9.9.9", "one series per patient folder"]),
    ("rows", {"shape": (5, 4)}, ["Rows x Columns", "Remove the odd"]),
    ("spacing", {"spacing": (0.9, 0.9)}, ["PixelSpacing", "one pixel spacing"]),
    ("square", {"spacing": (0.7, 0.9)}, ["PixelSpacing", "not square", "Resample"]),
    ("pixeldata", {"drop": ("PixelData",)}, ["PixelData", "Remove it"]),
    ("slope", {"drop": ("RescaleSlope",)}, ["RescaleSlope", "missing_rescale="]),
    ("duplicate", {"z": 0.0}, ["same ImagePositionPatient[2]", "Remove duplicates"]),
    ("localizer", {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, ["localizer"]),
])
def test_dicom_errors_name_the_file_and_the_fix(tmp_path, case, kw, words):
    kw = dict(kw)
    folder = tmp_path / "patient7"
    one_good(folder, z=0.0)
    shape = kw.pop("shape", (4, 4))
    kw.setdefault("z", 3.0)
    write_ct(folder / "bad.dcm", _ramp(shape), **kw)
    with pytest.raises(ValueError) as err:
        io.read_dicom_patients(tmp_path)
    message = str(err.value)
    assert str(folder) in message
    if case not in ("series", "duplicate"):
        assert "bad.dcm" in message
    for word in words:
        assert word in message, (word, message)


def test_missing_rescale_can_be_supplied_with_a_warning(tmp_path):
    write_ct(tmp_path / "p" / "a.dcm", _ramp((4, 4)) + 24,
             drop=("RescaleSlope", "RescaleIntercept"))
    with pytest.warns(UserWarning, match="RescaleSlope and RescaleIntercept missing"):
        vol = io.read_dicom_patients(tmp_path, missing_rescale=(1.0, -1024.0))
    np.testing.assert_array_equal(vol["p"].hu, _ramp((1, 4, 4)) - 1000.0)


def test_missing_folders_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.read_dicom_patients(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="empty"):
        io.read_dicom_patients(tmp_path)
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="No DICOM files") as err:
        io.read_dicom_patients(tmp_path)
    assert "p1" in str(err.value)


def test_sample_slices(two_patients):
    vols = io.read_dicom_patients(two_patients[0])
    a = io.sample_slices(vols["patA"], 3, seed=1)
    assert a.dtype.kind == "i" and len(a) == 3 and len(set(a)) == 3
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 5
    np.testing.assert_array_equal(a, io.sample_slices(vols["patA"], 3, seed=1))
    draws = {tuple(io.sample_slices(vols["patA"], 2, seed=s)) for s in range(20)}
    assert len(draws) > 3  # the seed matters
    assert set(io.sample_slices(vols["patA"], 5, seed=0)) == set(range(5))
    with pytest.raises(ValueError, match=r"'patB'.*has 4 slices but 6 were requested"):
        io.sample_slices(vols["patB"], 6, seed=0)


# ---------------------------------------------------------------------------------------------
# NumPy stacks


def test_numpy_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.uniform(-1000, 1500, (3, 8, 10)).astype(np.float32)
    np.save(tmp_path / "vol.npy", stack)
    vol = io.read_numpy_stack(tmp_path / "vol.npy", pixel_size_mm=0.75)
    np.testing.assert_array_equal(vol.hu, stack)
    assert vol.pixel_size_mm == 0.75 and vol.patient_id == "vol"
    np.save(tmp_path / "one.npy", stack[0].astype(np.int16))
    assert io.read_numpy_stack(tmp_path / "one.npy").hu.shape == (1, 8, 10)
    np.savez(tmp_path / "a.npz", hu=stack, pixel_size_mm=0.6, other=np.zeros(3))
    vol = io.read_numpy_stack(tmp_path / "a.npz")
    np.testing.assert_array_equal(vol.hu, stack)
    assert vol.pixel_size_mm == pytest.approx(0.6)
    np.savez(tmp_path / "b.npz", images=stack)
    np.testing.assert_array_equal(io.read_numpy_stack(tmp_path / "b.npz").hu, stack)
    np.savez(tmp_path / "c.npz", x=stack, y=stack[:1])
    np.testing.assert_array_equal(io.read_numpy_stack(tmp_path / "c.npz", key="y").hu,
                                  stack[:1])


@pytest.mark.parametrize("array, words", [
    (np.zeros(5), ["1 dims", "[S, H, W]"]),
    (np.zeros((2, 2, 3, 3)), ["4 dims"]),
    (np.where(np.eye(4) > 0, np.nan, -1000.0), ["non-finite", "NaN"]),
    (np.linspace(0.01, 0.03, 16).reshape(4, 4), ["does not look like HU", "HU = 1000"]),
    (np.linspace(0.0, 1.0, 16).reshape(4, 4), ["does not look like HU"]),
    (np.linspace(-1000.0, 1000.0, 16).reshape(4, 4) * 1e30, ["beyond what a scanner stores"]),
    (np.stack([np.linspace(-1000.0, 500.0, 16).reshape(4, 4), np.zeros((4, 4))]),
     ["slice 1", "every pixel is 0 HU", "holds no image"]),
])
def test_numpy_errors(tmp_path, array, words):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError) as err:
        io.read_numpy_stack(path)
    assert "bad.npy" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_numpy_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        io.read_numpy_stack(tmp_path / "missing.npy")
    np.savez(tmp_path / "two.npz", x=np.zeros((2, 2)), y=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\['x', 'y'\].*key="):
        io.read_numpy_stack(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="no array named 'z'"):
        io.read_numpy_stack(tmp_path / "two.npz", key="z")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="unsupported suffix"):
        io.read_numpy_stack(tmp_path / "img.png")
    soft = np.full((4, 4), 40.0) + np.eye(4)
    np.save(tmp_path / "soft.npy", soft)
    np.testing.assert_array_equal(io.read_numpy_stack(tmp_path / "soft.npy",
                                                      check_hu=False).hu[0], soft)


# ---------------------------------------------------------------------------------------------
# Resampling


@pytest.mark.parametrize("factor", [2, 4])
def test_downsampling_is_area_averaging(factor):
    rng = np.random.default_rng(2)
    img = rng.normal(0.0, 100.0, (32, 32))
    out = io.resample_to_grid(img, 0.5, 32 // factor, 0.5 * factor)
    np.testing.assert_allclose(out, downscale_local_mean(img, (factor, factor)), atol=1e-3)


def test_upsampling_is_linear_interpolation():
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 100.0, (2, 16, 16))
    out = io.resample_to_grid(img, 1.0, 32, 0.5)
    ref = np.stack([resize(im, (32, 32), order=1, mode="edge", anti_aliasing=False) for im in img])
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_padding_with_air_and_area_conservation():
    img = np.full((10, 10), 40.0)
    out = io.resample_to_grid(img, 1.0, 20, 1.0)
    np.testing.assert_array_equal(out[5:15, 5:15], img)
    out[5:15, 5:15] = -1000.0
    assert np.all(out == -1000.0)
    # Non-integer ratio: the integral of (HU + 1000) over the plane is conserved.
    rng = np.random.default_rng(4)
    img = rng.uniform(-1000.0, 1000.0, (37, 23))
    out = io.resample_to_grid(img, 0.7, 20, 1.9)
    assert ((out + 1000.0).sum() * 1.9 ** 2) == pytest.approx((img + 1000.0).sum() * 0.49,
                                                             rel=1e-6)


def test_cropping_tissue_warns():
    img = np.full((40, 40), 30.0)
    with pytest.warns(UserWarning, match="cropped border holds tissue"):
        out = io.resample_to_grid(img, 1.0, 20, 1.0)
    np.testing.assert_allclose(out, 30.0)
    img[:, :10] = img[:, 30:] = img[:10] = img[30:] = -1000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.resample_to_grid(img, 1.0, 20, 1.0)
    with pytest.raises(ValueError, match="pixel_size_mm"):
        io.resample_to_grid(img, None, 20, 1.0)
