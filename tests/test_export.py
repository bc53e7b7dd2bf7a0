"""Export round trip: the artifact, loaded with jax and numpy only, denoises as train_lib does."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dicom_series, train_tiny

from configs import tiny
from consensus_jax import artifact, evaluation, experiment
from consensus_jax import export as cj_export

# Loads the artifact in a fresh interpreter where the training stack cannot be imported.
_LOADER = """
import sys
for name in ("flax", "optax", "orbax", "orbax.checkpoint", "tensorflow", "consensus_jax",
             "ml_collections"):
    sys.modules[name] = None
sys.path.insert(0, sys.argv[1])
import numpy as np
from load_model import Model
model = Model.load(sys.argv[1])
inputs = np.load(sys.argv[2])
out = {k: model.denoise(*[inputs[f"{k}_{n}"] for n in model.inputs]) for k in ("a", "b")}
np.savez(sys.argv[3], **out)
print(repr(model))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {kind: train_tiny(root / kind, kind) for kind in ("consensus", "noise2noise")}


@pytest.mark.parametrize("kind", ["consensus", "noise2noise"])
def test_exported_model_matches_train_lib_in_a_fresh_process_without_training_code(
        runs, kind, tmp_path):
    folder = cj_export.write(*cj_export.build(runs[kind]), tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == kind and manifest["units"] == "HU" and manifest["scale"] == 1000
    # Each scheme is fed what evaluation feeds it: the pair both halves, Noise2noise one half.
    assert manifest["inputs"] == (["x1", "x2"] if kind == "consensus" else ["x1"])
    assert "cpu" in manifest["platforms"] and len(manifest["config_sha256"]) == 64
    rng = np.random.default_rng(0)
    # Two sizes, one not a multiple of 2**depth (padded inside the exported function), in HU.
    inputs = {f"{size}_{name}": rng.normal(0, 300, shape).astype(np.float32)
              for size, shape in (("a", (3, 32, 32)), ("b", (2, 45, 38)))
              for name in manifest["inputs"]}
    np.savez(tmp_path / "in.npz", **inputs)
    result = subprocess.run([sys.executable, "-c", _LOADER, str(folder), str(tmp_path / "in.npz"),
                             str(tmp_path / "out.npz")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Model({kind}, ct" in result.stdout
    method, params, _, _ = evaluation.load_run(runs[kind])
    out = np.load(tmp_path / "out.npz")
    for size in ("a", "b"):
        xs = [jnp.asarray(inputs[f"{size}_{n}"][..., None] / 1000) for n in manifest["inputs"]]
        expected = np.asarray(method.denoise(params, *xs))[..., 0] * 1000
        np.testing.assert_allclose(out[size], expected, atol=1e-3, rtol=1e-5)  # HU


def test_export_refuses_to_overwrite_and_names_the_problem(runs, tmp_path):
    parts = cj_export.build(runs["noise2noise"], "latest")
    folder = cj_export.write(*parts, tmp_path / "model")
    before = (folder / "params.npz").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        cj_export.write(*parts, folder)
    assert (folder / "params.npz").read_bytes() == before
    assert cj_export.main(["export", f"--workdir={runs['noise2noise']}", f"--out={folder}"]) == 5
    assert not list(tmp_path.glob(".model-*"))  # no temporary folder left behind
    with pytest.raises(FileNotFoundError, match="neither an exported model"):
        cj_export.load(tmp_path)


def test_model_refuses_wrong_inputs(runs, tmp_path):
    pair = cj_export.load(runs["consensus"])
    single = cj_export.load(runs["noise2noise"])
    x = np.zeros((1, 32, 32), np.float32)
    with pytest.raises(ValueError, match="pair of half reconstructions"):
        pair.denoise(x)
    with pytest.raises(ValueError, match="takes one image per slice"):
        single.denoise(x, x)
    with pytest.raises(ValueError, match=r"expected \[S, H, W, 1\]"):
        single.denoise(np.zeros((32, 32), np.float32))
    bad = x.copy()
    bad[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="slice 0 holds NaN"):
        single.denoise(bad)
    assert isinstance(single, artifact.Model)


# --- the denoise command -----------------------------------------------------------------------

def test_dicom_series_round_trip(runs, tmp_path):
    import pydicom

    from consensus_jax import denoise
    from consensus_jax.ct import io as ct_io

    model = cj_export.load(runs["noise2noise"])
    source = dicom_series(tmp_path / "in")
    out = denoise.denoise_path(model, source, tmp_path / "out")
    before = [pydicom.dcmread(p) for p in sorted(source.iterdir())]
    after = [pydicom.dcmread(out / p.name) for p in sorted(source.iterdir())]
    assert len({str(d.SeriesInstanceUID) for d in after}) == 1
    assert after[0].SeriesInstanceUID != before[0].SeriesInstanceUID
    sops = {str(d.SOPInstanceUID) for d in after}
    assert len(sops) == 3 and not sops & {str(d.SOPInstanceUID) for d in before}
    for a, b in zip(after, before, strict=True):
        for tag in ("StudyInstanceUID", "PatientID", "PixelSpacing", "ImagePositionPatient",
                    "InstanceNumber", "RescaleSlope", "RescaleIntercept", "Rows"):
            assert a.get(tag) == b.get(tag), tag
        assert str(a.SeriesDescription).endswith("denoised")
        assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
        assert a.pixel_array.dtype == b.pixel_array.dtype
    # Reads back as the denoised HU within one rescale step (slope 1 here: rounding only).
    expected = model.denoise(ct_io.read_dicom_series(source).hu)
    read_back = ct_io.read_dicom_series(out).hu
    assert np.abs(read_back - expected).max() <= 0.5 * float(before[0].RescaleSlope) + 1e-3


def test_denoise_cli_refuses_overwrite_pairs_and_unusual_input(runs, tmp_path, capsys):
    from consensus_jax import denoise

    source = dicom_series(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    args = ["denoise", f"--model={runs['noise2noise']}", f"--input={source}", f"--output={out}"]
    assert denoise.main(args) == 5  # errors.OutputExistsError
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "earlier result"
    pair = ["denoise", f"--model={runs['consensus']}", f"--input={source}",
            f"--output={tmp_path / 'pair_out'}"]
    assert denoise.main(pair) == 3  # errors.InputError
    assert "Distil it" in capsys.readouterr().err and not (tmp_path / "pair_out").exists()
    # Values that cannot be HU, and a pixel spacing far from the training data's.
    model = cj_export.load(runs["noise2noise"])
    attenuation = np.linspace(0.0, 0.02, 2 * 32 * 32).reshape(2, 32, 32)  # mu in 1/mm
    np.save(tmp_path / "huge.npy", attenuation.astype(np.float32))
    with pytest.raises(denoise.InputError, match="does not look like HU"):
        denoise.denoise_path(model, tmp_path / "huge.npy", tmp_path / "huge_out.npy")
    model.manifest["trained_for"] = {"geometry": {"image": {"pixel_size_mm": 1.48}}}
    with pytest.raises(denoise.InputError, match="pixel spacing 0.661 mm"):
        denoise.denoise_path(model, source, tmp_path / "spacing_out")
    assert not (tmp_path / "spacing_out").exists() and not list(tmp_path.glob(".spacing_out*"))
    denoise.denoise_path(model, source, tmp_path / "spacing_out", allow_other_spacing=True)


def test_numpy_and_nifti_round_trips(runs, tmp_path):
    nib = pytest.importorskip("nibabel")
    from consensus_jax import denoise

    single, pair = cj_export.load(runs["noise2noise"]), cj_export.load(runs["consensus"])
    rng = np.random.default_rng(1)
    stack = rng.normal(0, 200, (3, 40, 36)).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    out = denoise.denoise_path(single, tmp_path / "stack.npy", tmp_path / "stack_dn.npy")
    np.testing.assert_allclose(np.load(out), single.denoise(stack), atol=1e-4)
    np.savez(tmp_path / "halves.npz", x1=stack, x2=stack[::-1])
    out = denoise.denoise_path(pair, tmp_path / "halves.npz", tmp_path / "pair_dn.npy")
    np.testing.assert_allclose(np.load(out), pair.denoise(stack, stack[::-1]), atol=1e-4)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    volume = np.moveaxis(stack, 0, 2)  # (x, y, slice)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "vol.nii.gz")
    out = denoise.denoise_path(single, tmp_path / "vol.nii.gz", tmp_path / "vol_dn.nii.gz")
    image = nib.load(out)
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)  # stored as float32
    np.testing.assert_allclose(np.asarray(image.dataobj),
                               np.moveaxis(single.denoise(stack), 0, 2), atol=1e-3)


def test_usage_page_code_blocks_run(runs, tmp_path):
    """Every code block of docs/usage.md except the training commands (the training tests cover
    those), in a folder holding the files the page names."""
    import re
    import shutil

    from conftest import ROOT

    page = (ROOT / "docs/usage.md").read_text()
    blocks = re.findall(r"```(python|bash)\n(.*?)```", page, flags=re.S)
    shutil.copytree(runs["noise2noise"], tmp_path / "work_dirs/ct_quick/distill")
    dicom_series(tmp_path / "scan_folder")
    rng = np.random.default_rng(2)
    np.save(tmp_path / "full_dose_hu.npy", rng.normal(0, 100, (2, 48, 48)).astype(np.float32))
    np.save(tmp_path / "low_dose_hu.npy", rng.normal(0, 150, (2, 48, 48)).astype(np.float32))
    ran = 0
    for lang, code in blocks:
        if lang == "bash":
            code = code.replace("\\\n", " ")
            if "train.py" in code:
                continue
            for line in filter(None, map(str.strip, code.splitlines())):
                assert line.startswith("python "), line
                cmd = [sys.executable, *line.split()[1:]]
                result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                                        timeout=300)
                assert result.returncode == 0, (line, result.stderr[-3000:])
        else:
            result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, (code, result.stderr[-3000:])
        ran += 1
    assert ran == 4
    assert (tmp_path / "exported/ct_distilled/load_model.py").exists()
    assert len(list((tmp_path / "scan_denoised").iterdir())) == 3


def test_fastmri_round_trip_runs_the_pair_on_its_own_split(tmp_path):
    import h5py
    from test_mri_fastmri import KY, RECON, SLICES, _write

    from consensus_jax import denoise

    train_tiny(tmp_path / "run", num_steps=2, mri=True)
    model = cj_export.load(tmp_path / "run", "latest")
    assert model.inputs == ["x1", "x2"]
    source = _write(tmp_path / "scan.h5")
    with pytest.raises(denoise.InputError, match="does not record how its training data"):
        denoise.denoise_path(model, source, tmp_path / "out.h5")
    model.manifest["trained_for"] = {"acceleration": 2.0, "num_center_lines": 4}
    with h5py.File(source, "a") as f:  # fastMRI's attributes of the input's own RSS image
        f.attrs.update({"max": 123.0, "norm": 456.0, "acquisition": "CORPD_FBK"})
    out = denoise.denoise_path(model, source, tmp_path / "out.h5", seed=3, uncertainty=True)
    with h5py.File(tmp_path / "out_uncertainty.h5") as f:
        spread, spread_masks = f["spread"][()], f["mask"][()]
    with h5py.File(out) as f, h5py.File(source) as src:
        z = f["denoised"][()]
        np.testing.assert_array_equal(f["mask"][()], spread_masks)
        # Cropped to the header's reconstruction matrix (RECON x RECON), not the KY columns.
        assert z.shape == (SLICES, RECON, RECON) and z.dtype == np.complex64
        magnitude = f["denoised_magnitude"][()]
        np.testing.assert_allclose(magnitude, np.abs(z), rtol=1e-6)
        assert f["ismrmrd_header"][()] == src["ismrmrd_header"][()]
        masks, mask1, mask2 = f["mask"][()], f["mask1"][()], f["mask2"][()]
        assert f.attrs["acquisition"] == "CORPD_FBK"
        assert f.attrs["max"] == pytest.approx(float(magnitude.max()))
        assert f.attrs["norm"] == pytest.approx(float(np.sqrt(np.sum(magnitude.astype(
            np.float64) ** 2))), rel=1e-5)
    # The two halves of the 4x mask: disjoint outside the 4 centre columns [10, 14).
    center = np.zeros(KY, bool)
    center[KY // 2 - 2:KY // 2 + 2] = True
    assert masks.shape == mask1.shape == mask2.shape == (SLICES, KY)
    np.testing.assert_array_equal(mask1 | mask2, masks)
    np.testing.assert_array_equal(mask1 & mask2, np.broadcast_to(center, masks.shape))
    # The pair's own inputs, made as in training, through the method's denoise.
    from consensus_jax.mri import fastmri, pipeline
    from consensus_jax.mri.masks import Undersampling

    recon = pipeline.ConsensusMRIConfig(undersampling=Undersampling(2.0, 4))
    s = next(iter(fastmri.read_fastmri_slices(source, [1])))
    import jax

    inputs = pipeline.consensus_inputs(s.kspace, jax.random.fold_in(jax.random.PRNGKey(3), 1),
                                       recon, acquired=s.acquired)
    np.testing.assert_array_equal(masks[1], np.asarray(inputs["mask"]))
    np.testing.assert_array_equal(mask1[1], np.asarray(inputs["mask1"]))
    method, params, _, _ = evaluation.load_run(tmp_path / "run", "latest")
    y = np.asarray(method.denoise(params, inputs["x1"][None], inputs["x2"][None]))[0]
    expected = (y[..., 0] + 1j * y[..., 1]) * float(inputs["scale"])
    assert expected.shape == (RECON, KY)
    first = (KY - RECON) // 2  # fastMRI's centre crop
    expected = expected[:, first:first + RECON]
    np.testing.assert_allclose(z[1], expected, atol=1e-5 * np.abs(expected).max())
    # The spread: |f1(x1) - f2(x2)| / 2 as complex numbers, in the units of ``denoised``.
    ys = [np.asarray(method.apply_whole(params[f"net{k}"], inputs[f"x{k}"][None]))[0]
          for k in (1, 2)]
    diff = (ys[0] - ys[1])[..., 0] + 1j * (ys[0] - ys[1])[..., 1]
    assert spread.shape == (SLICES, RECON, RECON) and spread.dtype == np.float32
    np.testing.assert_allclose(spread[1], np.abs(diff)[:, first:first + RECON] / 2
                               * float(inputs["scale"]),
                               atol=1e-5 * np.abs(expected).max())


def test_fastmri_input_unlike_the_training_data_is_refused_or_warned(tmp_path, capsys):
    import h5py
    from test_mri_fastmri import COILS, KY, RECON, _kspace, _write

    from consensus_jax import denoise

    train_tiny(tmp_path / "run", num_steps=1, mri=True)
    model = cj_export.load(tmp_path / "run", "latest")
    like = {"acceleration": 2.0, "num_center_lines": 4, "num_coils": COILS,
            "image_shape": [RECON, KY]}
    model.manifest["trained_for"] = dict(like)
    # Already undersampled: every other acquired column [2, 22) is empty, 2x before our 2x.
    kspace = _kspace()
    kspace[..., 3:22:2] = 0
    source = _write(tmp_path / "scan.h5", kspace)
    assert denoise.denoise_path(model, _write(tmp_path / "full.h5"), tmp_path / "a.h5")
    assert capsys.readouterr().err.count("Warning:") == 0  # like the training data: silent
    model.manifest["trained_for"] = {**like, "num_coils": 15, "image_shape": [320, 368]}
    with pytest.raises(denoise.InputError) as err:
        denoise.denoise_path(model, source, tmp_path / "b.h5")
    message = str(err.value)
    assert f"{COILS} coils, the model was trained on 15" in message
    assert f"matrix {RECON} x {KY}, the model was trained on 320 x 368" in message
    assert "already undersampled 2.00x, so the model would see 4x" in message
    assert "--allow_mismatch" in message
    out = denoise.denoise_path(model, source, tmp_path / "b.h5", allow_mismatch=True)
    with h5py.File(out) as f:
        assert f["denoised"].shape[1:] == (RECON, RECON)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "Warning:" in line]
    assert len(warnings) == 3 and all(str(source) in w for w in warnings)


def test_noise_level_is_estimated_and_checked():
    import jax
    import jax.numpy as jnp

    from consensus_jax import denoise
    from consensus_jax.mri.simulate import CoilSimulation, simulate_kspace
    from consensus_jax.phantoms.knee import virtual_knee

    image = jnp.asarray(virtual_knee(0, 1, 128)[0])
    for snr in (10.0, 20.0, 40.0):
        kspace, _, _ = simulate_kspace(image, jax.random.PRNGKey(1),
                                       CoilSimulation(num_coils=8, snr=snr))
        # The simulation's definition: peak |x| over the complex noise std per sample.
        assert denoise.estimate_snr(np.asarray(kspace), (0, 128)) == pytest.approx(snr, rel=0.15)
    manifest = {"trained_for": {"snr": 18.0}}
    assert denoise.check_mri_input(manifest, 8, (128, 128), 1.0, 20.0, "scan.h5", False) == []
    with pytest.raises(denoise.InputError, match="SNR about 60.*trained at 18"):
        denoise.check_mri_input(manifest, 8, (128, 128), 1.0, 60.0, "scan.h5", False)
    # A measured-data model records no number: nothing to compare.
    assert denoise.check_mri_input({"trained_for": {"snr": "measured data"}}, 8, (128, 128),
                                   1.0, 60.0, "scan.h5", False) == []


def test_noise_level_check_reads_a_few_evenly_spread_slices(tmp_path, monkeypatch):
    from test_mri_fastmri import COILS, KX, KY, _kspace, _write

    from consensus_jax import denoise
    from consensus_jax.mri import fastmri

    path = _write(tmp_path / "scan.h5", _kspace((12, COILS, KX, KY)))
    read, original = [], fastmri.read_fastmri_slices

    def recording(path, slices=None, **kwargs):
        read.append(None if slices is None else [int(i) for i in slices])
        return original(path, slices, **kwargs)

    monkeypatch.setattr(fastmri, "read_fastmri_slices", recording)
    everything = np.mean([denoise.estimate_snr(s.kspace, s.acquired)
                          for s in original(path)])
    estimate = denoise._mean_snr(path, 12)
    assert read == [[0, 3, 6, 8, 11]]  # not the whole file a second time
    assert estimate == pytest.approx(everything, rel=0.2)
    assert denoise._mean_snr(path, 2) and read[-1] == [0, 1]


# --- the networks' spread (--uncertainty) --------------------------------------------------------

def _one_image_pair(runs):
    """The trained pair run on one image per slice (both networks read it): a model with one
    input and a spread, as a DICOM series or NIfTI volume needs. ``(model, method, params)``."""
    import jax
    from jax import export as jax_export

    method, params, _, _ = evaluation.load_run(runs["consensus"])
    leaves, treedef = jax.tree.flatten(params)

    def both(leaves, x):
        return method.denoise_and_spread(jax.tree.unflatten(treedef, leaves), x, x)

    b, h, w = jax_export.symbolic_shape("b, h, w")
    exported = jax_export.export(jax.jit(both), platforms=("cpu",))(
        [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
        jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32))
    _, _, manifest = cj_export.build(runs["consensus"])
    manifest = {**manifest, "inputs": ["x_est"]}
    model = artifact.Model(jax_export.deserialize(exported.serialize()),
                           [np.asarray(x) for x in leaves], manifest)
    return model, method, params


def test_exported_pair_gives_the_spread_of_its_networks(runs, tmp_path):
    folder = cj_export.write(*cj_export.build(runs["consensus"]), tmp_path / "pair")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["outputs"] == ["denoised", "spread"]
    model = artifact.Model.load(folder)
    assert model.has_uncertainty
    rng = np.random.default_rng(3)
    x1, x2 = (rng.normal(0, 300, (2, 45, 38)).astype(np.float32) for _ in range(2))
    z, spread = model.denoise_with_uncertainty(x1, x2)
    np.testing.assert_array_equal(z, model.denoise(x1, x2))
    np.testing.assert_array_equal(spread, model.uncertainty(x1, x2))
    # Against each network run alone in the training code: |f1(x1) - f2(x2)| / 2, in HU.
    method, params, _, _ = evaluation.load_run(runs["consensus"])
    y1 = np.asarray(method.apply_whole(params["net1"], jnp.asarray(x1[..., None] / 1000)))
    y2 = np.asarray(method.apply_whole(params["net2"], jnp.asarray(x2[..., None] / 1000)))
    np.testing.assert_allclose(spread, np.abs(y1 - y2)[..., 0] / 2 * 1000, atol=1e-3)
    np.testing.assert_allclose(z, (y1 + y2)[..., 0] / 2 * 1000, atol=1e-3)


def test_models_without_a_spread_and_older_versions(runs, tmp_path):
    folder = cj_export.write(*cj_export.build(runs["noise2noise"]), tmp_path / "single")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["outputs"] == ["denoised"]
    single = artifact.Model.load(folder)
    x = np.zeros((1, 32, 32), np.float32)
    with pytest.raises(ValueError, match=r"\(noise2noise\) has no uncertainty map"):
        single.uncertainty(x)
    # A version 2 folder (no "outputs"; its function returns the denoised image) still loads.
    old = {k: v for k, v in manifest.items() if k != "outputs"}
    (folder / "manifest.json").write_text(json.dumps({**old, "format_version": 2}))
    older = artifact.Model.load(folder)
    assert older.outputs == ["denoised"] and not older.has_uncertainty
    np.testing.assert_array_equal(older.denoise(x + 5), single.denoise(x + 5))
    with pytest.raises(ValueError, match="exported before version 3"):
        older.uncertainty(x)
    # A manifest that claims a spread the function does not return is refused by name.
    (folder / "manifest.json").write_text(json.dumps(
        {**manifest, "outputs": ["denoised", "spread"]}))
    with pytest.raises(ValueError, match="returns 1 arrays, the manifest lists"):
        artifact.Model.load(folder)
    (folder / "manifest.json").write_text(json.dumps({**old, "format_version": 3}))
    with pytest.raises(ValueError, match="outputs None"):
        artifact.Model.load(folder)


def test_denoise_uncertainty_numpy_pair_writes_a_second_recorded_file(runs, tmp_path, capsys):
    from consensus_jax import denoise, outputs

    rng = np.random.default_rng(4)
    x1, x2 = (rng.normal(0, 200, (3, 40, 36)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "halves.npz", x1=x1, x2=x2)
    out = tmp_path / "pair_dn.npy"
    args = ["denoise", f"--model={runs['consensus']}", f"--input={tmp_path / 'halves.npz'}",
            f"--output={out}", "--uncertainty"]
    assert denoise.main(args) == 0
    spread_path = tmp_path / "pair_dn_uncertainty.npy"
    assert str(spread_path) in capsys.readouterr().out
    pair = cj_export.load(runs["consensus"])
    np.testing.assert_allclose(np.load(out), pair.denoise(x1, x2), atol=1e-4)
    np.testing.assert_allclose(np.load(spread_path), pair.uncertainty(x1, x2), atol=1e-4)
    assert np.all(np.load(spread_path) >= 0)
    for path in (out, spread_path):  # each recorded as this command's output
        assert outputs.why_not_replaceable(path, denoise.COMMAND) is None
    assert denoise.main(args) == 5  # both exist: --overwrite needed
    assert denoise.main([*args, "--overwrite"]) == 0
    # A spread file the command did not write is refused before any work, whatever the flags.
    out.unlink()
    spread_path.unlink()
    spread_path.write_bytes(b"someone else's")
    assert denoise.main([*args, "--overwrite"]) == 5
    assert "the spread's output" in capsys.readouterr().err
    assert not out.exists() and spread_path.read_bytes() == b"someone else's"


def test_uncertainty_of_a_single_network_is_a_usage_error(runs, tmp_path, capsys):
    from consensus_jax import denoise

    np.save(tmp_path / "stack.npy", np.random.default_rng(5).normal(0, 200, (2, 32, 32))
            .astype(np.float32))
    args = ["denoise", f"--model={runs['noise2noise']}", f"--input={tmp_path / 'stack.npy'}",
            f"--output={tmp_path / 'dn.npy'}", "--uncertainty"]
    assert denoise.main(args) == 2
    err = capsys.readouterr().err
    assert "--uncertainty" in err and "(noise2noise)" in err
    assert not list(tmp_path.glob("dn*"))


def test_uncertainty_dicom_series_and_nifti_beside_the_output(runs, tmp_path):
    import pydicom

    from consensus_jax import denoise
    from consensus_jax.ct import io as ct_io

    model, method, params = _one_image_pair(runs)
    source = dicom_series(tmp_path / "in")
    out = denoise.denoise_path(model, source, tmp_path / "out", uncertainty=True)
    spread_dir = tmp_path / "out_uncertainty"
    hu = ct_io.read_dicom_series(source).hu
    expected = model.uncertainty(hu)
    # The pair on one image, by hand: |f1(x) - f2(x)| / 2 in HU.
    x = jnp.asarray(hu[..., None] / 1000)
    by_hand = np.abs(np.asarray(method.apply_whole(params["net1"], x))
                     - np.asarray(method.apply_whole(params["net2"], x)))[..., 0] / 2 * 1000
    np.testing.assert_allclose(expected, by_hand, atol=1e-3)
    main = [pydicom.dcmread(out / p.name) for p in sorted(source.iterdir())]
    spread = [pydicom.dcmread(spread_dir / p.name) for p in sorted(source.iterdir())]
    assert len({str(d.SeriesInstanceUID) for d in spread}) == 1
    assert spread[0].SeriesInstanceUID not in (main[0].SeriesInstanceUID,
                                               pydicom.dcmread(source / "slice0.dcm")
                                               .SeriesInstanceUID)
    for a, b in zip(spread, main, strict=True):
        assert "consensus spread" in str(a.SeriesDescription)
        for tag in ("StudyInstanceUID", "PixelSpacing", "ImagePositionPatient",
                    "ImageOrientationPatient", "SliceThickness", "Rows", "Columns"):
            assert a.get(tag) == b.get(tag), tag
        assert a.SOPInstanceUID != b.SOPInstanceUID
    slope = float(spread[0].RescaleSlope)
    assert np.abs(ct_io.read_dicom_series(spread_dir).hu - expected).max() <= 0.5 * slope + 1e-3
    assert np.abs(ct_io.read_dicom_series(out).hu - model.denoise(hu)).max() <= 0.5 * slope + 1e-3
    nib = pytest.importorskip("nibabel")
    volume = np.moveaxis(hu, 0, 2)
    nib.save(nib.Nifti1Image(volume, np.diag([0.66, 0.66, 2.5, 1.0])), tmp_path / "v.nii.gz")
    out = denoise.denoise_path(model, tmp_path / "v.nii.gz", tmp_path / "v_dn.nii.gz",
                               uncertainty=True)
    stored = nib.load(tmp_path / "v_dn_uncertainty.nii.gz")
    np.testing.assert_allclose(stored.affine, nib.load(out).affine)
    np.testing.assert_allclose(np.asarray(stored.dataobj), np.moveaxis(expected, 0, 2), atol=1e-3)


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_exported_noise2noise_gives_the_evaluated_images(modality, tmp_path):
    """Noise2noise is evaluated on x1 (its export_inputs); the exported model, fed the same
    test slices, gives the same images as evaluate's column."""
    from configs import mri_tiny

    config = (tiny if modality == "ct" else mri_tiny).get_config()
    config.data.name = "synthetic"
    config.loss.kind = "noise2noise"
    config.loss.beta_r = 0.0
    config.train.num_steps = 2
    config.train.eval_every_steps = 0
    config.train.checkpoint_every_steps = 2
    config.train.tensorboard = config.train.progress = False
    experiment.fit(config, tmp_path / "run")
    method, params, _, _ = evaluation.load_run(tmp_path / "run", "latest")
    from consensus_jax import input_pipeline

    images = input_pipeline.load_split(config.data, config.data.test_split, modality)
    evaluated = evaluation.predict(method, params, images)["Noise2noise"]
    folder = cj_export.write(*cj_export.build(tmp_path / "run", "latest"), tmp_path / "model")
    model = artifact.Model.load(folder)
    assert model.inputs == ["x1"]
    scale = 1000.0 if modality == "ct" else 1.0
    exported = model.denoise(images["x1"] * scale) / scale
    assert exported.shape == evaluated.shape == images["x1"].shape
    np.testing.assert_allclose(exported, evaluated, rtol=1e-5, atol=1e-6)
    # Fed the other half it would differ: the check can tell the inputs apart.
    assert not np.allclose(model.denoise(images["x2"] * scale) / scale, evaluated, atol=1e-3)
