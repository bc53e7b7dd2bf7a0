"""Export round trip: the artifact, loaded with jax and numpy only, denoises as train_lib does."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dicom_series

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
    out = {}
    for kind in ("consensus", "noise2noise"):
        config = tiny.get_config()
        config.train.tensorboard = config.train.progress = False
        config.train.num_steps = 3
        config.loss.kind = kind
        config.loss.beta_r = 0.5 if kind == "consensus" else 0.0
        experiment.fit(config, root / kind)
        out[kind] = root / kind
    return out


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

    from configs import mri_tiny
    from consensus_jax import denoise

    config = mri_tiny.get_config()
    config.data.name = "synthetic"
    config.train.num_steps = 2
    config.train.eval_every_steps = 0
    config.train.tensorboard = config.train.progress = False
    experiment.fit(config, tmp_path / "run")
    model = cj_export.load(tmp_path / "run", "latest")
    assert model.inputs == ["x1", "x2"]
    source = _write(tmp_path / "scan.h5")
    with pytest.raises(denoise.InputError, match="does not record how its training data"):
        denoise.denoise_path(model, source, tmp_path / "out.h5")
    model.manifest["trained_for"] = {"acceleration": 2.0, "num_center_lines": 4}
    out = denoise.denoise_path(model, source, tmp_path / "out.h5", seed=3)
    with h5py.File(out) as f, h5py.File(source) as src:
        z = f["denoised"][()]
        assert z.shape == (SLICES, RECON, KY) and z.dtype == np.complex64
        np.testing.assert_allclose(f["denoised_magnitude"][()], np.abs(z), rtol=1e-6)
        assert f["ismrmrd_header"][()] == src["ismrmrd_header"][()]
        masks = f["mask"][()]
    # The pair's own inputs, made as in training, through the method's denoise.
    from consensus_jax.mri import fastmri, pipeline
    from consensus_jax.mri.masks import Undersampling

    recon = pipeline.ConsensusMRIConfig(undersampling=Undersampling(2.0, 4))
    s = next(iter(fastmri.read_fastmri_slices(source, [1])))
    import jax

    inputs = pipeline.consensus_inputs(s.kspace, jax.random.fold_in(jax.random.PRNGKey(3), 1),
                                       recon, acquired=s.acquired)
    np.testing.assert_array_equal(masks[1], np.asarray(inputs["mask"]))
    method, params, _, _ = evaluation.load_run(tmp_path / "run", "latest")
    y = np.asarray(method.denoise(params, inputs["x1"][None], inputs["x2"][None]))[0]
    expected = (y[..., 0] + 1j * y[..., 1]) * float(inputs["scale"])
    np.testing.assert_allclose(z[1], expected, atol=1e-5 * np.abs(expected).max())
