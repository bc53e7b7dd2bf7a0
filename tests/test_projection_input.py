"""The CT data path from raw helical projections: x1, x2, x_est, x_full per slice, the dataset
built from DICOM-CT-PD series (data_prep.ct --config=projections_*), denoising a projection
series into a DICOM image series, and prep -> train -> evaluate through the command lines.

References: FBPs of the exact fan-beam projections of an analytic phantom (data_prep.ctpd), the
FBP of all views computed directly, and the model run on the halves made here.
"""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from conftest import ROOT, dicom_series, train_tiny

from configs import tiny
from consensus_jax import denoise
from consensus_jax import export as cj_export
from consensus_jax.ct import ctpd, projection_input
from consensus_jax.ct import rebin as rb
from consensus_jax.ct.fbp import fbp
from consensus_jax.ct.geometry import ImageGrid
from consensus_jax.errors import ConfigError, InputError
from data_prep import ct as prep_ct
from data_prep import ctpd as writer

GRID = ImageGrid(64, 6.0)  # the projections_tiny preset's grid


@pytest.fixture(scope="module")
def patients(tmp_path_factory):
    """Four tiny patients (noiseless-phantom scans with independent noise), the layout
    data_prep.ct --config=projections reads."""
    root = tmp_path_factory.mktemp("projections")
    for seed in range(4):
        writer.write_fixture(root / f"virtual-{seed:04d}", "tiny", "ellipsoids", seed,
                             photons_per_ray=2e4)
    return root


def test_halves_and_all_views_match_direct_and_exact_fbp(tmp_path):
    # No flying focal spot: one geometry, so the halves are real subsets of it and
    # x_est = (x1 + x2) / 2 is not the same computation as the FBP of all views.
    preset = writer.ScanPreset(num_channels=96, num_rows=8, views_per_rotation=128,
                               num_rotations=2.0, ffs_mode="FFSNONE")
    scan = writer.helical_scan(preset)
    projections = writer.project_shapes(writer.ellipsoid_phantom(), scan)
    folder = tmp_path / "series"
    folder.mkdir()
    writer.write_series(folder, projections, scan, description="test",
                        study_uid=pydicom.uid.generate_uid())
    index = ctpd.index_series(folder)
    grid = ImageGrid(48, 8.0)
    (images,) = projection_input.reconstruct_slices(index, [0.0], grid, index)
    sinogram, groups = ctpd.rebin_series(index, [0.0], grid)
    (group,) = groups
    direct = index.hu(np.asarray(rb.reconstruct(sinogram, groups))[0])
    scale = np.abs(direct).max()
    assert np.abs(images["x_est"] - direct).max() < 1e-5 * scale  # measured 4e-7
    assert np.abs(images["x_full"] - direct).max() < 1e-5 * scale
    # Each half against the FBP of the exact fan-beam projections of the slice on its views.
    exact = writer.fan_line_integrals(writer.ellipsoid_phantom(), group.geometry, 0.0)
    mask = grid.fov_mask()
    for key, first in (("x1", 0), ("x2", 1)):
        views = np.arange(first, scan.views_per_rotation, 2)
        reference = index.hu(np.asarray(fbp(exact[views], group.geometry.subset(views))))
        error = (images[key] - reference)[mask]
        assert np.sqrt(np.mean(error ** 2)) < 1.0, key  # HU; measured 0.08 (x1), 0.10 (x2)
    # The halves differ (different views): the wrong pairing is far worse (measured 24 HU).
    swapped = images["x2"] - index.hu(np.asarray(
        fbp(exact[0::2], group.geometry.subset(np.arange(0, scan.views_per_rotation, 2)))))
    assert np.sqrt(np.mean(swapped[mask] ** 2)) > 10.0


def test_slice_grid_and_half_groups():
    scan = writer.helical_scan(writer.PRESETS["tiny"], 10.0)
    lo, hi = rb.slice_range_mm(scan)
    k = projection_input.slice_grid(scan, 0.5)
    assert k[0] * 0.5 >= lo and k[-1] * 0.5 <= hi
    assert (k[0] - 1) * 0.5 < lo and (k[-1] + 1) * 0.5 > hi
    groups = rb.fan_geometries(scan, GRID)
    half1, half2 = projection_input.half_groups(groups, scan.views_per_rotation)
    assert np.array_equal(np.concatenate([g.views for g in half1]),
                          np.arange(0, scan.views_per_rotation, 2))
    assert sum(g.views.size for g in half2) == scan.views_per_rotation // 2
    with pytest.raises(ValueError, match="even number"):
        projection_input.half_groups(groups, 63)
    with pytest.raises(InputError, match="outside the range"):
        projection_input.check_positions(scan, [hi + 1.0], "series")


def _build(manual_dir, data_dir, *extra):
    return prep_ct.main(["--config=projections_tiny", f"--manual_dir={manual_dir}",
                         f"--data_dir={data_dir}", *extra])


@pytest.fixture(scope="module")
def dataset(patients, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    assert _build(patients, data_dir) == 0
    return data_dir


def _split(data_dir, split):
    from consensus_jax import input_pipeline

    data = tiny.get_config().data
    data.data_dir, data.name, data.config = str(data_dir), "ct_consensus", "projections_tiny"
    return input_pipeline.load_split(data, split, "ct")


def test_dataset_from_projections(dataset, patients):
    from data_prep.ct_consensus import ct_consensus_dataset_builder as lib

    test = _split(dataset, "test")
    assert test["x1"].shape == (2, 64, 64, 1)
    np.testing.assert_array_equal(test["x_clean"], test["x_full"])
    np.testing.assert_allclose(test["x_est"], 0.5 * (test["x1"] + test["x2"]), atol=1e-6)
    # Patients in folder order: virtual-0002 is the test patient; its slices are those drawn.
    config = lib.PRESETS["projections_tiny"]
    listed = lib.list_patients(config, patients)
    assert [p.split for p in listed] == ["train", "train", "test", "validation"]
    source = listed[2]
    assert list(test["slice_index"]) == list(source.slice_indices)
    quarter = ctpd.index_series(patients / "virtual-0002" / writer.QUARTER_DOSE_FOLDER)
    full = ctpd.index_series(patients / "virtual-0002" / writer.FULL_DOSE_FOLDER)
    z = [k * config.slice_spacing_mm for k in source.slice_indices]
    for i, images in enumerate(projection_input.reconstruct_slices(quarter, z, GRID, full)):
        for key in ("x1", "x2", "x_full"):
            np.testing.assert_allclose(test[key][i, ..., 0] * 1000.0, images[key], atol=0.05)
    report = json.loads(next(dataset.rglob("split_diagnostic.json")).read_text())
    assert report["reference"].startswith("x_full") and "full_vs_low_dose" not in report
    # Quarter dose: halves noisier than the full dose; the noise is nonzero.
    assert report["low_dose_fbp_rmse_vs_full_dose_hu"] > 1.0


def test_series_folders_are_found_by_pattern_and_content(patients, tmp_path):
    from data_prep.ct_consensus import ct_consensus_dataset_builder as lib

    config = lib.PRESETS["projections_tiny"]
    patient = tmp_path / "L067"
    study = patient / "study 1"
    shutil.copytree(patients / "virtual-0000" / writer.FULL_DOSE_FOLDER,
                    study / "Full Dose Projections")
    shutil.copytree(patients / "virtual-0000" / writer.QUARTER_DOSE_FOLDER,
                    study / "Low Dose Projections")
    dicom_series(patient / "full_1mm")  # reconstructed images beside the projections
    full, quarter = lib.find_series(config, patient)
    assert (full.name, quarter.name) == ("Full Dose Projections", "Low Dose Projections")
    dicom_series(patient / "full_3mm_sharp_projections_copy")
    shutil.copytree(study / "Full Dose Projections", patient / "full_again")
    with pytest.raises(InputError, match="2 folders match --config.full_dose_glob"):
        lib.find_series(config, patient)


def test_missing_series_and_bad_positions_are_refused(patients, tmp_path):
    broken = tmp_path / "patients"
    shutil.copytree(patients, broken)
    shutil.rmtree(broken / "virtual-0001" / writer.QUARTER_DOSE_FOLDER)
    with pytest.raises(InputError, match=r"virtual-0001: no quarter-dose projection series") \
            as info:
        _build(broken, tmp_path / "tfds")
    assert info.value.exit_code == 3
    assert not (tmp_path / "tfds" / "ct_consensus" / "projections_tiny").exists()
    with pytest.raises(ConfigError, match="not a multiple of"):
        _build(patients, tmp_path / "tfds2", "--config.slice_positions_mm=0.3",
               "--config.name=tiny_at")
    with pytest.raises(InputError, match="outside the range"):
        _build(patients, tmp_path / "tfds3", "--config.slice_positions_mm=300",
               "--config.name=tiny_far")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A consensus pair and a noise2clean network (3 steps on the synthetic set), told they
    were trained on the tiny projection grid."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("consensus", "noise2clean"):
        train_tiny(root / kind, kind)
        model = cj_export.load(root / kind, "latest")
        model.manifest["trained_for"] = {"geometry": {"image": dataclasses.asdict(GRID)}}
        out[kind] = model
    return out


def test_denoise_projection_series(models, patients, tmp_path):
    model = models["consensus"]
    assert model.inputs == ["x1", "x2"]
    series = patients / "virtual-0000" / writer.QUARTER_DOSE_FOLDER
    out = denoise.denoise_path(model, series, tmp_path / "out",
                               slice_positions_mm=[1.0, -1.5])
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["000001.dcm", "000002.dcm"]
    read = [pydicom.dcmread(f) for f in files]
    first = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    index = ctpd.index_series(series)
    halves = list(projection_input.reconstruct_slices(index, [-1.5, 1.0], GRID,
                                                      keys=("x1", "x2")))
    x1, x2 = (np.stack([h[k] for h in halves]) for k in ("x1", "x2"))
    expected = model.denoise(x1, x2)
    corner = -31.5 * 6.0
    for ds, z, want in zip(read, (-1.5, 1.0), expected, strict=True):
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.StudyInstanceUID == first.StudyInstanceUID
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([corner, corner, z])
        assert float(ds.SliceLocation) == pytest.approx(z)
        assert [float(v) for v in ds.PixelSpacing] == [6.0, 6.0]
        assert (ds.Rows, ds.Columns) == (64, 64)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(hu - want).max() <= 0.5 + 1e-3  # rounding to whole HU
    assert len({ds.SeriesInstanceUID for ds in read}) == 1
    # --overwrite replaces this command's own output; without it the output is refused.
    with pytest.raises(denoise.outputs.OutputExistsError):
        denoise.denoise_path(model, series, out, num_slices=1)
    denoise.denoise_path(model, series, out, overwrite=True, num_slices=3)
    assert len(list(out.iterdir())) == 3
    # --uncertainty: a second series, the pair's spread on the same slices and geometry.
    out = denoise.denoise_path(model, series, tmp_path / "with_spread", uncertainty=True,
                               slice_positions_mm=[1.0, -1.5])
    _, spread = model.denoise_with_uncertainty(x1, x2)
    read = [pydicom.dcmread(f) for f in sorted(denoise.uncertainty_path(out).iterdir())]
    assert len(read) == 2 and read[0].SeriesInstanceUID != pydicom.dcmread(
        sorted(out.iterdir())[0]).SeriesInstanceUID
    for ds, z, want in zip(read, (-1.5, 1.0), spread, strict=True):
        assert float(ds.SliceLocation) == pytest.approx(z)
        assert "spread" in ds.SeriesDescription
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(hu - want).max() <= 0.5 + 1e-3


def test_denoise_projection_defaults_and_refusals(models, patients, tmp_path):
    series = patients / "virtual-0001" / writer.QUARTER_DOSE_FOLDER
    scan = ctpd.index_series(series).scan
    z = denoise.slice_positions(scan)  # every 1 mm over the covered range
    lo, hi = rb.slice_range_mm(scan)
    assert np.allclose(np.diff(z), 1.0) and z[0] >= lo and z[-1] <= hi and z[0] - 1 < lo
    # One network on x_est: the quarter-dose FBP of all views.
    single = models["noise2clean"]
    assert single.inputs == ["x_est"]
    out = denoise.denoise_path(single, series, tmp_path / "one", num_slices=2)
    assert len(list(out.iterdir())) == 2
    # A model whose inputs a projection series cannot give is refused before any work.
    other = models["consensus"]
    other.manifest = {**other.manifest, "inputs": ["x1", "x2", "x3"]}
    with pytest.raises(InputError, match="cannot make x3"):
        denoise.denoise_path(other, series, tmp_path / "three")
    assert not (tmp_path / "three").exists()


def _run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_projections_prep_train_evaluate(patients, tmp_path):
    data = tmp_path / "tfds"
    _run("-m", "data_prep.ct", "--config=projections_tiny", f"--manual_dir={patients}",
         f"--data_dir={data}")
    runs = []
    for kind in ("consensus", "noise2noise"):
        runs.append(tmp_path / kind)
        _run("train.py", "--config=configs/tiny.py", f"--workdir={runs[-1]}",
             f"--config.loss.kind={kind}", f"--config.data.data_dir={data}",
             "--config.data.name=ct_consensus", "--config.data.config=projections_tiny",
             "--config.train.num_steps=3", "--config.train.tensorboard=False",
             *(["--config.loss.beta_r=0"] if kind == "noise2noise" else []))
    out = tmp_path / "results"
    stdout = _run("evaluate.py", "--runs=" + ",".join(map(str, runs)), f"--out={out}")
    table = (out / "table.md").read_text()
    assert "| Index | FBP | Noise2noise |" in table and "Proposed" in table
    # Measured data: scored against the full-dose FBP only (x_clean and x_true are copies).
    assert "vs full-dose FBP" in table and "noiseless" not in table
    assert "RMSE (HU) vs full-dose FBP" in stdout
