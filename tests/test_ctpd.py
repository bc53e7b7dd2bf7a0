"""Raw helical projections: the DICOM-CT-PD reader, single-slice rebinning and the fixture writer.

Accuracy is measured against exact line integrals of an analytic phantom of ellipsoids and
cylinders: the FBP of the rebinned helical projections of a slice against the FBP of that slice's
exact 2-D fan-beam projections on the same FanBeamGeometry, in HU inside the field of view.
"""

import dataclasses
import math
import shutil

import numpy as np
import pydicom
import pytest

from consensus_jax.ct import ctpd
from consensus_jax.ct import rebin as rb
from consensus_jax.ct.fbp import fbp
from consensus_jax.ct.geometry import ImageGrid
from consensus_jax.errors import InputError, MissingInputError, OutputExistsError
from data_prep import ctpd as writer

PHANTOM = writer.ellipsoid_phantom()
# 16 rows, 128 channels, 360 views per rotation: small, with the real scanner's distances.
SMALL = writer.ScanPreset(num_channels=128, num_rows=16, views_per_rotation=360,
                          num_rotations=2.2, pitch=1.0, ffs_mode="FFSNONE")
IMAGE = ImageGrid(64, 6.0)
SLICES = (0.0, 2.0)  # mm; sharp z edges of small spheres lie within a few mm of z = 0


def _hu(mu):
    return 1000.0 * np.asarray(mu) / writer.MU_WATER


def _fov_rmse_max(a, b, grid=IMAGE):
    d = _hu(np.asarray(a) - np.asarray(b))[..., grid.fov_mask()]
    return float(np.sqrt(np.mean(d ** 2))), float(np.abs(d).max())


def _exact_sinograms(scan, groups, z):
    """Exact fan-beam line integrals of the slice at z, arranged like the rebinned views."""
    out = np.zeros((scan.views_per_rotation, scan.num_channels))
    for g in groups:
        out[g.views] = writer.fan_line_integrals(PHANTOM, g.geometry, z)
    return out


@pytest.fixture(scope="module")
def small_scan():
    scan = writer.helical_scan(SMALL)
    views = rb.views_needed(scan, SLICES)
    return scan, views, writer.project_shapes(PHANTOM, scan, views)


def test_rebinning_matches_exact_fan_beam_fbp(small_scan):
    scan, views, proj = small_scan
    groups = rb.fan_geometries(scan, IMAGE)
    assert len(groups) == 1
    recon = np.asarray(rb.reconstruct(rb.rebin(proj, scan, views, SLICES), groups))
    for i, z in enumerate(SLICES):
        reference = np.asarray(fbp(_exact_sinograms(scan, groups, z), groups[0].geometry))
        rmse, worst = _fov_rmse_max(recon[i], reference)
        # Measured 0.13 / 0.51 HU RMSE (max 1.2 / 7.3 HU) at z = 0 / 2 mm.
        assert rmse < 1.5 and worst < 20.0, (z, rmse, worst)
    # The rows matter: the central row of the nearest view (no rebinning) is far worse, and so is
    # the rebinning of projections whose rows run the other way (a flipped row axis).
    g = groups[0].geometry
    reference = np.asarray(fbp(_exact_sinograms(scan, groups, 0.0), g))
    slot = np.searchsorted(views, rb.select_views(scan, 0.0))
    centre = proj[slot, scan.num_rows // 2 - 1: scan.num_rows // 2 + 1].mean(axis=1)
    assert _fov_rmse_max(fbp(centre, g), reference)[0] > 3.0
    flipped = np.asarray(rb.rebin(proj[:, ::-1], scan, views, [0.0]))[0]
    assert _fov_rmse_max(fbp(flipped, g), reference)[0] > 3.0


def test_flying_focal_spot_handling():
    # In-plane and axial FFS (the odd and even views' sources alternate): "native" keeps each
    # focal spot's channel grid, "common" resamples onto one, "ignore" drops the offsets.
    scan = writer.helical_scan(dataclasses.replace(SMALL, ffs_mode="FFSXYZ"))
    views = rb.views_needed(scan, [0.0])
    proj = writer.project_shapes(PHANTOM, scan, views)
    native = rb.fan_geometries(scan, IMAGE, "native")
    assert len(native) == 2 and sorted(int(g.views[0]) for g in native) == [0, 1]
    reference = np.asarray(rb.reconstruct(_exact_sinograms(scan, native, 0.0), native))
    rmse = {}
    for mode in rb.FFS_MODES:
        sino = rb.rebin(proj, scan, views, [0.0], ffs=mode)
        recon = rb.reconstruct(sino, rb.fan_geometries(scan, IMAGE, mode))[0]
        rmse[mode] = _fov_rmse_max(recon, reference)[0]
    # Measured: native 0.35, common 8.3, ignore 3.8 HU.
    assert rmse["native"] < 1.5, rmse
    assert rmse["ignore"] > 2 * rmse["native"] and rmse["common"] > 2 * rmse["native"], rmse


def _reversed(scan):
    """The same trajectory travelled backwards: angles and table positions decreasing."""
    flip = {name: getattr(scan, name)[::-1].copy() for name in (
        "source_angles_rad", "table_positions_mm", "ffs_angular_rad", "ffs_axial_mm",
        "ffs_radial_mm")}
    return dataclasses.replace(scan, **flip)


@pytest.mark.parametrize("backwards", [False, True])
def test_jax_rebinning_equals_numpy_reference(backwards):
    preset = writer.ScanPreset(num_channels=40, num_rows=8, views_per_rotation=48,
                               num_rotations=2.5, pitch=1.2, ffs_mode="FFSXYZ")
    scan = writer.helical_scan(preset)
    drho = np.where(np.arange(scan.num_views) % 2 == 0, 1.5, -1.5)  # a radial FFS offset too
    scan = dataclasses.replace(scan, ffs_radial_mm=drho)
    if backwards:
        scan = _reversed(scan)
    z = [-1.0, 2.5]
    views = rb.views_needed(scan, z)
    proj = writer.project_shapes(PHANTOM, scan, views)
    for mode in rb.FFS_MODES:
        ours = np.asarray(rb.rebin(proj, scan, views, z, ffs=mode))
        ref = rb.numpy_rebin_reference(proj, scan, views, z, ffs=mode)
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max(), mode
    angles = rb.output_angles(scan)
    assert np.all(np.diff(angles) > 0)


def test_rebin_refuses_slices_outside_the_scan(small_scan):
    scan, views, proj = small_scan
    lo, hi = rb.slice_range_mm(scan)
    with pytest.raises(ValueError, match="outside the rebinnable range"):
        rb.rebin(proj, scan, views, [hi + 1.0])
    with pytest.raises(ValueError, match="not given"):
        rb.rebin(proj[:10], scan, views[:10], [0.0])


# --- files -------------------------------------------------------------------------------------


TINY = writer.ScanPreset(num_channels=16, num_rows=4, views_per_rotation=16, num_rotations=2.0)


def _write(folder, scan, projections, **kwargs):
    folder.mkdir(parents=True)
    writer.write_series(folder, projections, scan, description="test",
                        study_uid=pydicom.uid.generate_uid(), ffs_mode=TINY.ffs_mode, **kwargs)
    return folder


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory):
    scan = writer.helical_scan(TINY, 10.0)
    rng = np.random.default_rng(0)
    projections = rng.uniform(-0.5, 12.0, (scan.num_views, scan.num_rows, scan.num_channels))
    folder = _write(tmp_path_factory.mktemp("ctpd") / "full", scan, projections)
    return folder, scan, projections


def test_round_trip(tiny_series):
    folder, scan, projections = tiny_series
    index = ctpd.index_series(folder)
    assert index.num_views == scan.num_views
    assert [p.name for p in index.files] == [f"{v + 1:06d}.dcm" for v in range(scan.num_views)]
    got = index.scan
    assert got.views_per_rotation == TINY.views_per_rotation
    for name in ("num_rows", "num_channels", "central_channel", "central_row"):
        assert getattr(got, name) == getattr(scan, name), name
    for name in ("channel_spacing_mm", "row_spacing_mm", "source_to_isocenter_mm",
                 "source_to_detector_mm"):
        assert getattr(got, name) == pytest.approx(getattr(scan, name), rel=1e-6), name
    np.testing.assert_allclose(got.source_angles_rad, scan.source_angles_rad, atol=2e-6)
    np.testing.assert_allclose(got.table_positions_mm, scan.table_positions_mm, atol=1e-5)
    for name in ("ffs_angular_rad", "ffs_axial_mm", "ffs_radial_mm"):
        np.testing.assert_allclose(getattr(got, name), getattr(scan, name), atol=1e-7)
    assert index.ffs_mode == "FFSXY" and index.mu_water_per_mm == pytest.approx(0.0192)
    assert index.channels_along_rows and index.angular_steps_tag == TINY.views_per_rotation
    assert got.pitch == pytest.approx(1.0, rel=1e-5)
    # Pixel values come back exactly as quantised; only the views asked for are read.
    some = [3, 17, 30]
    np.testing.assert_array_equal(ctpd.read_views(index, some),
                                  writer.quantize(projections[some])[1])
    np.testing.assert_array_equal(ctpd.read_views(index, range(scan.num_views)),
                                  writer.quantize(projections)[1])
    # The stored layout: Rows = channels, the channel and row order flipped.
    ds = pydicom.dcmread(index.files[5])
    stored = np.frombuffer(ds.PixelData, "<u2").reshape(ds.Rows, ds.Columns)
    assert (ds.Rows, ds.Columns) == (scan.num_channels, scan.num_rows)
    np.testing.assert_array_equal(stored, writer.quantize(projections[5])[0][::-1, ::-1].T)


def test_orientation_through_files(tmp_path):
    # A noiseless scan of the analytic phantom, written and read back, reconstructs the phantom's
    # slice the right way round (not mirrored, not rotated).
    preset = writer.ScanPreset(num_channels=96, num_rows=8, views_per_rotation=128,
                               num_rotations=2.0, ffs_mode="FFSXY")
    scan = writer.helical_scan(preset)
    folder = _write(tmp_path / "series", scan, writer.project_shapes(PHANTOM, scan))
    index = ctpd.index_series(folder)
    grid = ImageGrid(48, 8.0)
    sinograms, groups = ctpd.rebin_series(index, [0.0], grid)
    recon = np.asarray(rb.reconstruct(sinograms, groups))[0]
    c = grid.pixel_centres_mm()
    truth = writer.shape_slice_image(PHANTOM, c[None, :], c[::-1, None], 0.0)
    mask = grid.fov_mask()

    def corr(a, b):
        return np.corrcoef(a[mask], b[mask])[0, 1]

    assert corr(recon, truth) > 0.9
    # The body is nearly symmetric: compare what each mirror changes, which a mirrored or
    # transposed reconstruction would give with the opposite sign.
    for mirror in (lambda a: a[:, ::-1], lambda a: a[::-1, :], lambda a: a.T):
        assert corr(recon - mirror(recon), truth - mirror(truth)) > 0.8


def _copy(series, tmp_path):
    return shutil.copytree(series, tmp_path / "copy")


def _edit(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)


def test_reader_refuses_folders_without_projections(tmp_path):
    with pytest.raises(MissingInputError, match="does not exist"):
        ctpd.index_series(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(MissingInputError, match="No DICOM-CT-PD projection files"):
        ctpd.index_series(tmp_path)


def test_reader_names_a_missing_private_tag(tiny_series, tmp_path):
    folder = _copy(tiny_series[0], tmp_path)

    def drop(ds):
        del ds[0x70311003]

    _edit(folder / "000004.dcm", drop)
    with pytest.raises(InputError, match=r"000004.dcm.*\(7031,1003\) "
                                         "DetectorFocalCenterRadialDistance is missing"):
        ctpd.index_series(folder)


def test_reader_refuses_a_changing_detector_size(tiny_series, tmp_path):
    folder = _copy(tiny_series[0], tmp_path)

    def resize(ds):
        ds.Rows, ds.Columns = ds.Columns, ds.Rows

    _edit(folder / "000009.dcm", resize)
    with pytest.raises(InputError, match=r"000009.dcm: Rows x Columns .* = 4 x 16, but 16 x 4"):
        ctpd.index_series(folder)


def test_reader_refuses_views_out_of_order(tiny_series, tmp_path):
    folder = _copy(tiny_series[0], tmp_path)

    def number(n):
        def change(ds):
            ds.InstanceNumber = n
        return change

    _edit(folder / "000005.dcm", number(12))
    _edit(folder / "000012.dcm", number(5))
    with pytest.raises(InputError, match="views out of order: 000004.dcm .* and 000012.dcm"):
        ctpd.index_series(folder)


def test_reader_refuses_duplicated_views(tiny_series, tmp_path):
    folder = _copy(tiny_series[0], tmp_path)
    shutil.copy(folder / "000005.dcm", folder / "000005-copy.dcm")
    with pytest.raises(InputError, match="000005-copy.dcm and 000005.dcm have the same "
                                         "InstanceNumber 5"):
        ctpd.index_series(folder)
    # The same view again under its own InstanceNumber (the later views renumbered).
    for path in sorted(folder.glob("0000*.dcm"), reverse=True):
        n = pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber
        if n > 5 and path.name != "000005-copy.dcm":
            _edit(path, lambda ds: setattr(ds, "InstanceNumber", ds.InstanceNumber + 1))
    _edit(folder / "000005-copy.dcm", lambda ds: setattr(ds, "InstanceNumber", 6))
    with pytest.raises(InputError, match="duplicated view: 000005.dcm .* and 000005-copy.dcm"):
        ctpd.index_series(folder)


def test_reader_names_a_truncated_file(tiny_series, tmp_path):
    folder = _copy(tiny_series[0], tmp_path)
    path = folder / "000007.dcm"
    path.write_bytes(path.read_bytes()[:-40])
    index = ctpd.index_series(folder)  # headers are intact
    assert ctpd.read_views(index, [5, 7]).shape == (2, TINY.num_rows, TINY.num_channels)
    with pytest.raises(InputError, match="000007.dcm.*truncated"):
        ctpd.read_views(index, [6])
    path.write_bytes(path.read_bytes()[:300])  # cut inside the header
    with pytest.raises(InputError, match="000007.dcm: a DICOM file .*truncated"):
        ctpd.index_series(folder)


def test_reader_refuses_swapped_focal_spot_tags(tiny_series, tmp_path):
    folder = _copy(tiny_series[0], tmp_path)

    def swap(ds):
        ds[0x7033100B].value = np.asarray([0.6], "<f4").tobytes()  # 0.6 mm read as 0.6 rad

    _edit(folder / "000002.dcm", swap)
    with pytest.raises(InputError, match=r"\(7033,100B\).*may be swapped"):
        ctpd.index_series(folder)


def test_check_pair(tiny_series, tmp_path):
    folder, scan, projections = tiny_series
    full = ctpd.index_series(folder)
    ctpd.check_pair(full, ctpd.index_series(_write(tmp_path / "q", scan, projections * 0.9)))
    shifted = dataclasses.replace(scan, table_positions_mm=scan.table_positions_mm + 0.5)
    with pytest.raises(InputError, match="table position"):
        ctpd.check_pair(full, ctpd.index_series(_write(tmp_path / "z", shifted, projections)))
    short = dataclasses.replace(scan, **{n: getattr(scan, n)[:-4] for n in (
        "source_angles_rad", "table_positions_mm", "ffs_angular_rad", "ffs_axial_mm",
        "ffs_radial_mm")})
    with pytest.raises(InputError, match="28 views vs 32"):
        ctpd.check_pair(full, ctpd.index_series(_write(tmp_path / "s", short,
                                                       projections[:-4])))


def test_fixture_cli(tmp_path):
    out = tmp_path / "fixture"
    assert writer.main([f"--out={out}", "--preset=tiny", "--seed=1"]) == 0
    full = ctpd.index_series(out / writer.FULL_DOSE_FOLDER)
    quarter = ctpd.index_series(out / writer.QUARTER_DOSE_FOLDER)
    ctpd.check_pair(full, quarter)
    assert full.num_views == math.ceil(2.5 * 64) and full.ffs_mode == "FFSXY"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixture"]  # no temporary left
    assert writer.main([f"--out={out}"]) == OutputExistsError.exit_code
    with pytest.raises(OutputExistsError):
        writer.write_fixture(out)


def test_noise_of_halves_and_doses():
    # Odd/even halves of the rebinned quarter dose have independent noise; the quarter dose's FBP
    # noise is twice the full dose's.
    scan = writer.helical_scan(dataclasses.replace(SMALL, ffs_mode="FFSXY", num_rotations=2.5))
    z = [-3.0, -1.0, 1.0, 3.0]
    views = rb.views_needed(scan, z)
    clean = writer.project_shapes(PHANTOM, scan, views)
    full, quarter = writer.dose_pair(clean, seed=0, photons_per_ray=2e5)
    grid = ImageGrid(128, 3.0)
    groups = rb.fan_geometries(scan, grid)
    assert len(groups) == 2  # the two focal spots: even and odd views

    def recon(p, which=None):
        sino = rb.rebin(p, scan, views, z)
        if which is None:
            return np.asarray(rb.reconstruct(sino, groups))
        g = groups[which]
        return np.asarray(fbp(sino[:, g.views], g.geometry))

    x_clean = recon(clean)
    mask = grid.fov_mask()
    # Each half's error against the noiseless FBP of the same views: the halves' noiseless images
    # differ (view aliasing at half the views, opposite around the all-view image), which
    # would correlate their errors against the all-view image negatively without any noise.
    n1 = (recon(quarter, 0) - recon(clean, 0))[:, mask].ravel()
    n2 = (recon(quarter, 1) - recon(clean, 1))[:, mask].ravel()
    assert abs(np.corrcoef(n1, n2)[0, 1]) < 0.02
    ratio = (np.std((recon(quarter) - x_clean)[:, mask])
             / np.std((recon(full) - x_clean)[:, mask]))
    assert 1.85 < ratio < 2.15, ratio
