"""The bad-input catalogue: every command meets bad files, fields, values, run folders,
checkpoints and output paths with one message and the exit status documented in
consensus_jax/errors.py, leaves no partial output behind and never touches earlier results.

Each case runs one command on one bad input: train.py, evaluate.py, ablation.py and one
data_prep entry point as real processes (they parse absl's global flags); export, denoise and
the other data_prep cases in this process through the same boundary their entry points use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from conftest import dicom_series
from pydicom.uid import generate_uid

from configs import tiny
from consensus_jax import errors, evaluation, experiment
from consensus_jax import export as cj_export
from consensus_jax import workdir as wd
from consensus_jax.denoise import main as denoise_main
from data_prep import ct as ct_prep
from data_prep import mri as mri_prep

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train.py", "--config=configs/tiny.py", "--config.train.tensorboard=False",
         "--config.train.progress=False"]
EVALUATE = ["evaluate.py"]
IN_PROCESS = {"export": cj_export.main, "denoise": denoise_main,
              "prep_ct": errors.boundary(ct_prep.main), "prep_mri": errors.boundary(mri_prep.main)}


@dataclass
class Case:
    id: str
    command: str  # a script (train.py, evaluate.py, ...), "-m module", or a key of IN_PROCESS
    args: list[str]  # {run}, {model}, {out}, {tmp} are filled in
    code: int  # the documented exit status
    words: list[str]  # in the one-line message
    # Makes the bad input under {tmp}: a function of the case's folder, or the name of one in
    # SETUPS that starts from the finished run or its model.
    setup: Callable[[Path], None] | str | None = None
    absent: list[str] = field(default_factory=list)  # outputs that must not appear


# --- bad inputs -------------------------------------------------------------------------------

def _dicom(change: Callable) -> Callable[[Path], None]:
    return lambda tmp: dicom_series(tmp / "series", change=change)


def _set(name: str, value) -> Callable:
    return lambda i, ds: setattr(ds, name, value) if i == 1 else None


def _blank_slice(i, ds):
    if i == 1:
        ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.int16).tobytes()
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1


def _no_rescale(i, ds):
    if i == 1:
        del ds.RescaleSlope


def _truncate_pixels(tmp: Path) -> None:
    dicom_series(tmp / "series")
    path = tmp / "series" / "slice1.dcm"
    path.write_bytes(path.read_bytes()[:-4000])


def _stub_dicom(tmp: Path) -> None:
    dicom_series(tmp / "series")
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    ds.PatientName = "stub"
    ds.save_as(tmp / "series" / "stub.dcm", enforce_file_format=True)


def _not_dicom(tmp: Path) -> None:
    (tmp / "series").mkdir()
    (tmp / "series" / "notes.txt").write_text("not an image")


def _npy(array) -> Callable[[Path], None]:
    return lambda tmp: np.save(tmp / "in.npy", np.asarray(array, np.float32))


def _slices(*values) -> np.ndarray:
    ramp = np.linspace(-1000.0, 400.0, 32 * 32).reshape(32, 32)
    return np.stack([ramp if v is None else np.full((32, 32), v) for v in values])


def _existing_output(tmp: Path) -> None:
    np.save(tmp / "in.npy", _slices(None, None).astype(np.float32))
    (tmp / "done.npy").write_bytes(b"an earlier result")


def _file(name: str, text: str = "x") -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text(text)


def _config_only(run: Path) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "empty_run").mkdir()
        shutil.copy(run / "config.json", tmp / "empty_run" / "config.json")
    return setup


def _damaged_copy(run: Path) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        shutil.copytree(run, tmp / "damaged")
        for folder in (wd.CHECKPOINTS, wd.BEST):  # every file of every kept step, cut in half
            for f in (tmp / "damaged" / folder).rglob("*"):
                if f.is_file() and f.stat().st_size > 0:
                    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return setup


def _bad_manifest(model: Path) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        shutil.copytree(model, tmp / "model")
        manifest = json.loads((tmp / "model" / "manifest.json").read_text())
        manifest["format_version"] = 99
        (tmp / "model" / "manifest.json").write_text(json.dumps(manifest))
        np.save(tmp / "in.npy", _slices(None).astype(np.float32))
    return setup


def _edited_model(change: Callable[[Path, dict], None], rehash: bool = False,
                  then: Callable[[Path], None] | None = None
                  ) -> Callable[[Path], Callable[[Path], None]]:
    """A copy of the exported model as {tmp}/model, changed by ``change(folder, manifest)``
    (the manifest is written back unless ``change`` wrote the file itself), beside an input
    {tmp}/in.npy; ``then(tmp)`` may add other inputs. ``rehash`` records the changed files'
    SHA-256 in the manifest, so that the damage itself (not the checksum) is what the loader
    meets."""
    def from_model(model: Path) -> Callable[[Path], None]:
        def setup(tmp: Path) -> None:
            folder = tmp / "model"
            shutil.copytree(model, folder)
            text = (folder / "manifest.json").read_text()
            manifest = json.loads(text)
            change(folder, manifest)
            if rehash:
                manifest["files"] = {k: hashlib.sha256((folder / k).read_bytes()).hexdigest()
                                     for k in manifest["files"] if (folder / k).exists()}
            if (folder / "manifest.json").read_text() == text:
                (folder / "manifest.json").write_text(json.dumps(manifest))
            np.save(tmp / "in.npy", _slices(None, None).astype(np.float32))
            if then is not None:
                then(tmp)
        return setup
    return from_model


def _truncate(folder: Path, name: str) -> None:
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])


def _drop_parameter(folder: Path, manifest: dict) -> None:
    with np.load(folder / "params.npz") as f:
        arrays = {k: f[k] for k in f.files if k != "p0003"}
    np.savez(folder / "params.npz", **arrays)


def _modality(modality: str, inputs: list[str] | None = None) -> Callable[[Path, dict], None]:
    def change(folder: Path, manifest: dict) -> None:
        manifest["modality"] = modality
        if inputs:
            manifest["inputs"] = inputs
    return change


def _two_places(run: Path) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        shutil.copytree(run, tmp / "root" / "run_a")
        (tmp / "root" / "run_b").mkdir()
        (tmp / "root" / "run_b" / "notes.txt").write_text("another run's notes")
    return setup


def _scan_in_folder(tmp: Path) -> None:
    dicom_series(tmp / "P" / "scan")
    (tmp / "P" / "notes.txt").write_text("the user's notes")


def _npy_in_folder(tmp: Path) -> None:
    (tmp / "Q").mkdir()
    np.save(tmp / "Q" / "scan.npy", _slices(None, None).astype(np.float32))


def _foreign(tmp: Path) -> None:
    np.save(tmp / "in.npy", _slices(None, None).astype(np.float32))
    np.save(tmp / "other.npy", _slices(None).astype(np.float32))  # the user's, not ours
    (tmp / "folder").mkdir()
    (tmp / "folder" / "data.txt").write_text("the user's")


def _trained_at(pixel_mm: float) -> Callable[[Path, dict], None]:
    def change(folder: Path, manifest: dict) -> None:
        manifest["trained_for"] = {"geometry": {"image": {"pixel_size_mm": pixel_mm}}}
    return change


def _nifti(zooms: tuple[float, float]) -> Callable[[Path], None]:
    """A NIfTI volume {tmp}/in.nii.gz with pixels of ``zooms`` mm."""
    def setup(tmp: Path) -> None:
        import nibabel as nib

        image = nib.Nifti1Image(np.moveaxis(_slices(None, None), 0, 2).astype(np.float32),
                                np.diag([zooms[0], zooms[1], 2.5, 1.0]))
        nib.save(image, tmp / "in.nii.gz")
    return setup


def _truncated_nifti(tmp: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(np.moveaxis(_slices(None, None), 0, 2).astype(np.float32),
                            np.diag([0.7, 0.7, 2.5, 1.0]))
    nib.save(image, tmp / "in.nii.gz")
    _truncate(tmp, "in.nii.gz")


def _truncated_numpy(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        stack = _slices(None, None).astype(np.float32)
        np.save(tmp / name, stack) if name.endswith(".npy") else np.savez(tmp / name, x=stack)
        _truncate(tmp, name)
    return setup


def _raw(write: Callable[[Path], None]) -> Callable[[Path], None]:
    return write


FASTMRI = ["--config=fastmri", "--data_dir={tmp}/tfds", "--manual_dir={tmp}/knee",
           "--config.name=bad_knee", "--config.height_px=32", "--config.width_px=32",
           "--config.num_center_lines=8", "--config.num_train_patients=1",
           "--config.num_test_patients=1", "--config.num_validation_patients=0"]


def _h5(write: Callable[[h5py.File], None], n: int = 2) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "knee").mkdir()
        for i in range(n):
            with h5py.File(tmp / "knee" / f"file{i}.h5", "w") as f:
                write(f)
    return setup


def _kspace(values) -> Callable[[h5py.File], None]:
    def write(f: h5py.File) -> None:
        k = np.ones((2, 4, 64, 40), np.complex64) * values
        f.create_dataset("kspace", data=k)
        f["ismrmrd_header"] = ""
    return write


def _garbage_h5(tmp: Path) -> None:
    (tmp / "knee").mkdir()
    for i in range(2):
        (tmp / "knee" / f"file{i}.h5").write_bytes(b"\x00not hdf5" * 10)


# --- the catalogue ----------------------------------------------------------------------------

W = "--workdir={tmp}/w"
CASES = [
    # Config values and flags (train.py): exit 2, nothing written.
    Case("train-unknown-key", "train.py", [W, "--config.train.x=1"], 2,
         ["--config.train.x", "no such setting", "Valid keys under train"], absent=["w"]),
    Case("train-misspelled-group", "train.py", [W, "--config.trian.batch_size=3"], 2,
         ["Did you mean 'train.batch_size'"], absent=["w"]),
    Case("train-not-a-number", "train.py", [W, "--config.train.batch_size=abc"], 2,
         ["batch_size", "abc"], absent=["w"]),
    Case("train-negative-lr", "train.py", [W, "--config.optim.learning_rate=-0.003"], 2,
         ["optim.learning_rate=-0.003", "positive"], absent=["w"]),
    Case("train-zero-lr", "train.py", [W, "--config.optim.learning_rate=0"], 2,
         ["optim.learning_rate=0"], absent=["w"]),
    Case("train-nan-lr", "train.py", [W, "--config.optim.learning_rate=nan"], 2,
         ["optim.learning_rate=nan"], absent=["w"]),
    Case("train-zero-batch", "train.py", [W, "--config.train.batch_size=0"], 2,
         ["train.batch_size=0", ">= 1"], absent=["w"]),
    Case("train-negative-steps", "train.py", [W, "--config.train.num_steps=-5"], 2,
         ["train.num_steps=-5"], absent=["w"]),
    Case("train-patch-larger-than-images", "train.py", [W, "--config.train.patch_size_px=4096"],
         2, ["train.patch_size_px=4096", "larger than the training images"], absent=["w"]),
    Case("train-unknown-loss", "train.py", [W, "--config.loss.kind=n2v"], 2,
         ["loss.kind must be one of", "'n2v'"], absent=["w"]),
    Case("train-negative-beta", "train.py", [W, "--config.loss.beta_w=-1"], 2,
         ["loss.beta_w", ">= 0"], absent=["w"]),
    Case("train-distill-without-teacher", "train.py",
         [W, "--config.loss.kind=distill", "--config.loss.beta_r=0"], 2, ["loss.teacher"],
         absent=["w"]),
    Case("train-missing-config-file", "train.py", ["--config=configs/nope.py", W], 2,
         ["nope.py"], absent=["w"]),
    Case("train-unknown-flag", "train.py", [W, "--learning_rate=1"], 2,
         ["learning_rate", "--helpfull"], absent=["w"]),
    Case("train-positional-argument", "train.py", [W, "extra"], 2, ["Unexpected arguments"],
         absent=["w"]),
    Case("train-diverges", "train.py",
         [W, "--config.optim.learning_rate=1e12", "--config.train.num_steps=40"], 6,
         ["at step", "Lower optim.learning_rate"]),
    # Run folders and checkpoints.
    Case("train-teacher-not-a-run", "train.py",
         [W, "--config.loss.kind=distill", "--config.loss.beta_r=0",
          "--config.loss.teacher={tmp}/none"], 4, ["loss.teacher", "not a training workdir"],
         absent=["w"]),
    Case("train-other-config-in-workdir", "train.py",
         ["--workdir={run}", "--config.model.base_features=4"], 4,
         ["different config", "model.base_features: stored 8, now 4", "--allow_config_change"]),
    Case("train-allowed-change-of-shapes", "train.py",
         ["--workdir={run}", "--config.model.base_features=4", "--config.train.num_steps=9",
          "--allow_config_change"], 4, ["No checkpoint", "restores", "new --workdir"]),
    Case("evaluate-not-a-run", "evaluate.py", ["--runs={tmp}/none", "--out={tmp}/o"], 4,
         ["not a training workdir"], absent=["o"]),
    Case("evaluate-run-without-checkpoints", "evaluate.py",
         ["--runs={tmp}/empty_run", "--out={tmp}/o"], 4, ["No checkpoint", "train it first"],
         setup="config_only", absent=["o"]),
    Case("evaluate-every-checkpoint-damaged", "evaluate.py",
         ["--runs={tmp}/damaged", "--out={tmp}/o"], 4, ["no checkpoint restores"],
         setup="damaged", absent=["o"]),
    Case("evaluate-bad-checkpoint-name", "evaluate.py",
         ["--runs={run}", "--out={out}", "--checkpoint=newest"], 2,
         ["checkpoint must be 'best', 'latest' or a step number"]),
    Case("evaluate-missing-step", "evaluate.py",
         ["--runs={run}", "--out={out}", "--checkpoint=999"], 4,
         ["no checkpoint of step 999"]),
    # Evaluation arguments: refused before anything is computed or written.
    Case("evaluate-figure-slice-out-of-range", "evaluate.py",
         ["--runs={run}", "--out={out}", "--figure_slice=99"], 2,
         ["--figure_slice=99", "test split has"]),
    Case("evaluate-negative-figure-slice", "evaluate.py",
         ["--runs={run}", "--out={out}", "--figure_slice=-1"], 2, ["--figure_slice=-1"]),
    Case("evaluate-zoom-two-numbers", "evaluate.py", ["--runs={run}", "--out={out}", "--zoom=1,2"],
         2, ["--zoom", "row,col,size"]),
    Case("evaluate-zoom-outside-image", "evaluate.py",
         ["--runs={run}", "--out={out}", "--zoom=0,0,4096"], 2, ["leaves the"]),
    Case("evaluate-out-is-a-file", "evaluate.py", ["--runs={run}", "--out={tmp}/o"], 2,
         ["--out", "is a file"], setup=_file("o")),
    Case("evaluate-two-runs-one-column", "evaluate.py", ["--runs={run},{run}", "--out={out}"],
         2, ["Two runs fill the column"]),
    Case("evaluate-missing-out", "evaluate.py", ["--runs={run}"], 2, ["--out"]),
    Case("demo-unknown-modality", "demo.py", ["--modality=pet", "--work_root={tmp}/w"], 2,
         ["--modality", "'pet'"], absent=["w"]),
    Case("ablation-unknown-grid", "ablation.py",
         ["--config=configs/tiny.py", "--grid=nope", "--root={tmp}/r", "--out={tmp}/a"], 2,
         ["Unknown ablation grid 'nope'"], absent=["r", "a"]),
    # Data preparation: presets, fields, folders, HDF5 files.
    Case("prep-ct-negative-photons", "-m data_prep.ct",
         ["--config=tiny", "--config.photons_per_ray=-5", "--data_dir={tmp}/d"], 2,
         ["--config.photons_per_ray=-5.0", "must be a positive number"], absent=["d"]),
    Case("prep-ct-dose-fraction-above-one", "prep_ct",
         ["--config=tiny", "--config.dose_fraction=2", "--config.name=x", "--data_dir={tmp}/d"],
         2, ["--config.dose_fraction=2.0", "(0, 1]"], absent=["d"]),
    Case("prep-mri-negative-snr", "prep_mri",
         ["--config=tiny", "--config.snr=-5", "--config.name=x", "--data_dir={tmp}/d"], 2,
         ["--config.snr=-5.0", "must be a positive number"], absent=["d"]),
    Case("prep-mri-acceleration-below-one", "prep_mri",
         ["--config=tiny", "--config.acceleration=0.5", "--data_dir={tmp}/d"], 2,
         ["--config.acceleration=0.5", "> 1"], absent=["d"]),
    Case("prep-npy-without-pixel-size", "prep_ct",
         ["--config=numpy", "--manual_dir={tmp}", "--data_dir={tmp}/d", "--config.name=x",
          "--config.num_train_patients=1", "--config.num_validation_patients=0",
          "--config.num_test_patients=1"], 3,
         [".npy: the stack does not say its pixel size", "--config.numpy_pixel_size_mm=0.7",
          "pixel_size_mm=0.7)"],
         setup=lambda tmp: [np.save(tmp / f"p{i}.npy", _slices(None, None)) for i in range(2)],
         absent=["d"]),
    Case("train-config-syntax-error", "train.py", ["--config={tmp}/bad.py", W], 2,
         ["bad.py, line 1", "SyntaxError"], setup=_file("bad.py", "def get_config(:\n"),
         absent=["w"]),
    Case("train-config-raises", "train.py", ["--config={tmp}/bad.py", W], 2,
         ["bad.py, line 2 (in get_config)", "ValueError: no such preset"],
         setup=_file("bad.py", "def get_config():\n    raise ValueError('no such preset')\n"),
         absent=["w"]),
    Case("ablation-seeds-not-numbers", "ablation.py",
         ["--config=configs/tiny.py", "--seeds=a,b", "--root={tmp}/r", "--out={tmp}/a"], 2,
         ["--seeds=a,b", "whole numbers"], absent=["r", "a"]),
    Case("train-only-checkpoint-damaged", "train.py",
         ["--workdir={tmp}/damaged", "--config.train.num_steps=3", "--config.loss.kind=noise2noise",
          "--config.loss.beta_r=0"], 4,
         ["it is damaged", "checkpoints/3", "delete", "backup"], setup="damaged"),
    Case("prep-unknown-preset", "-m data_prep.ct", ["--config=huge", "--data_dir={tmp}/d"], 2,
         ["Unknown data preset 'huge'"], absent=["d"]),
    Case("prep-unknown-field", "prep_ct",
         ["--config=tiny", "--config.photons=1", "--data_dir={tmp}/d"], 2,
         ["no field 'photons'"], absent=["d"]),
    Case("prep-manual-dir-missing", "prep_ct",
         ["--config=tiny", "--manual_dir={tmp}/none", "--data_dir={tmp}/d"], 3,
         ["--manual_dir", "is not a folder"], absent=["d"]),
    Case("prep-dicom-folder-empty", "prep_ct",
         ["--config=dicom", "--manual_dir={tmp}/patients", "--data_dir={tmp}/d"], 3,
         ["patients", "holds 0 patients"],
         setup=lambda tmp: (tmp / "patients").mkdir(), absent=["d"]),
    Case("prep-mri-field-of-other-modality", "prep_mri",
         ["--config=tiny", "--config.photons_per_ray=1", "--data_dir={tmp}/d"], 2,
         ["no field 'photons_per_ray'"], absent=["d"]),
    Case("prep-fastmri-not-hdf5", "prep_mri", FASTMRI, 3, ["not a readable HDF5 file"],
         setup=_garbage_h5, absent=["tfds"]),
    Case("prep-fastmri-no-kspace", "prep_mri", FASTMRI, 3, ["kspace"],
         setup=_h5(lambda f: f.create_dataset("other", data=np.zeros(3))), absent=["tfds"]),
    Case("prep-fastmri-no-header", "prep_mri", FASTMRI, 3, ["ismrmrd_header"],
         setup=_h5(lambda f: f.create_dataset("kspace", data=np.ones((2, 4, 64, 40),
                                                                        np.complex64))),
         absent=["tfds"]),
    # Export: run folders, checkpoints, outputs.
    Case("export-not-a-run", "export", ["--workdir={tmp}/none", "--out={tmp}/e"], 4,
         ["none", "not a training workdir"], absent=["e"]),
    Case("export-out-exists", "export", ["--workdir={run}", "--out={model}"], 5,
         ["exists", "--overwrite"]),
    Case("export-missing-step", "export", ["--workdir={run}", "--out={tmp}/e", "--checkpoint=999"],
         4, ["no checkpoint of step 999"], absent=["e"]),
    Case("export-missing-flag", "export", ["--workdir={run}"], 2, ["usage", "--out"]),
    Case("export-unknown-flag", "export", ["--workdir={run}", "--out={tmp}/e", "--fast"], 2,
         ["fast"], absent=["e"]),
    # Denoise: NumPy stacks, DICOM series, models, outputs.
    Case("denoise-input-missing", "denoise",
         ["--model={model}", "--input={tmp}/none.npy", "--output={tmp}/o.npy"], 3,
         ["--input", "does not exist"], absent=["o.npy"]),
    Case("denoise-npy-nan", "denoise", ["--model={model}", "--input={tmp}/in.npy",
                                        "--output={tmp}/o.npy"], 3,
         ["non-finite values", "[slice, row, col] = (1, 0, 0)"],
         setup=_npy(_slices(None, np.nan)), absent=["o.npy"]),
    Case("denoise-npy-4d", "denoise", ["--model={model}", "--input={tmp}/in.npy",
                                       "--output={tmp}/o.npy"], 3, ["expected [S, H, W]"],
         setup=_npy(np.zeros((1, 2, 32, 32))), absent=["o.npy"]),
    Case("denoise-npy-not-hu", "denoise", ["--model={model}", "--input={tmp}/in.npy",
                                           "--output={tmp}/o.npy"], 3,
         ["beyond what a scanner stores"],
         setup=_npy(_slices(None, None) * 1e30), absent=["o.npy"]),
    Case("denoise-unknown-format", "denoise", ["--model={model}", "--input={tmp}/in.txt",
                                               "--output={tmp}/o.npy"], 3, ["unknown format"],
         setup=_file("in.txt"), absent=["o.npy"]),
    Case("denoise-output-exists", "denoise", ["--model={model}", "--input={tmp}/in.npy",
                                              "--output={tmp}/done.npy"], 5,
         ["done.npy exists", "--overwrite"], setup=_existing_output),
    Case("denoise-output-is-input", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/in.npy", "--overwrite"], 5,
         ["is the input"], setup=_npy(_slices(None))),
    Case("denoise-model-missing", "denoise",
         ["--model={tmp}/none", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["neither an exported model"], setup=_npy(_slices(None)), absent=["o.npy"]),
    Case("denoise-model-other-format-version", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["format_version 99", "export the model again"], setup="bad_manifest",
         absent=["o.npy"]),
    Case("denoise-dicom-not-ct", "denoise", ["--model={model}", "--input={tmp}/series",
                                             "--output={tmp}/out"], 3,
         ["slice1.dcm", "Modality", "'MR'", "expected 'CT'"], setup=_dicom(_set("Modality", "MR")),
         absent=["out"]),
    Case("denoise-dicom-blank-slice", "denoise", ["--model={model}", "--input={tmp}/series",
                                                  "--output={tmp}/out"], 3,
         ["slice1.dcm", "every pixel is 0 HU", "holds no image"], setup=_dicom(_blank_slice),
         absent=["out"]),
    Case("denoise-dicom-no-rescale", "denoise", ["--model={model}", "--input={tmp}/series",
                                                 "--output={tmp}/out"], 3,
         ["slice1.dcm", "RescaleSlope", "missing"], setup=_dicom(_no_rescale), absent=["out"]),
    Case("denoise-dicom-two-series", "denoise", ["--model={model}", "--input={tmp}/series",
                                                 "--output={tmp}/out"], 3,
         ["mixes 2 series"], setup=_dicom(_set("SeriesInstanceUID", "1.2.3.4")), absent=["out"]),
    Case("denoise-dicom-truncated-pixels", "denoise",
         ["--model={model}", "--input={tmp}/series", "--output={tmp}/out"], 3,
         ["slice1.dcm", "pixel data"], setup=_truncate_pixels, absent=["out"]),
    Case("denoise-dicom-stub-file", "denoise", ["--model={model}", "--input={tmp}/series",
                                                "--output={tmp}/out"], 3,
         ["stub.dcm", "without Modality (0008,0060) or pixel data"], setup=_stub_dicom,
         absent=["out"]),
    Case("denoise-dicom-no-dicom-files", "denoise",
         ["--model={model}", "--input={tmp}/series", "--output={tmp}/out"], 3,
         ["No DICOM files", "1 files"], setup=_not_dicom,
         absent=["out"]),
    # --overwrite never removes what the command did not write (every file is compared).
    Case("export-out-is-the-workdir", "export", ["--workdir={run}", "--out={run}", "--overwrite"],
         5, ["is the training workdir"]),
    Case("export-out-inside-the-workdir", "export",
         ["--workdir={run}", "--out={run}/exported", "--overwrite"], 5,
         ["lies inside the training workdir"]),
    Case("export-out-contains-the-workdir", "export",
         ["--workdir={tmp}/root/run_a", "--out={tmp}/root", "--overwrite"], 5,
         ["contains the training workdir"], setup="two_places"),
    Case("export-overwrite-a-foreign-folder", "export",
         ["--workdir={run}", "--out={tmp}/folder", "--overwrite"], 5,
         ["was not written by consensus_jax.export", "Move or remove it yourself"],
         setup=_foreign),
    Case("denoise-output-contains-the-input", "denoise",
         ["--model={model}", "--input={tmp}/P/scan", "--output={tmp}/P", "--overwrite"], 5,
         ["contains the input"], setup=_scan_in_folder),
    Case("denoise-output-is-the-folder-of-the-input", "denoise",
         ["--model={model}", "--input={tmp}/Q/scan.npy", "--output={tmp}/Q", "--overwrite"], 5,
         ["contains the input"], setup=_npy_in_folder),
    Case("denoise-output-inside-the-dicom-input", "denoise",
         ["--model={model}", "--input={tmp}/series", "--output={tmp}/series/out"], 5,
         ["lies inside the input"], setup=lambda tmp: dicom_series(tmp / "series")),
    Case("denoise-output-inside-the-model", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={model}/o.npy", "--overwrite"], 5,
         ["lies inside the model"], setup=_npy(_slices(None))),
    Case("denoise-overwrite-a-foreign-file", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/other.npy", "--overwrite"],
         5, ["was not written by consensus_jax.denoise"], setup=_foreign),
    # Denoise refuses what data preparation refuses.
    Case("denoise-npy-attenuation-units", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 3,
         ["does not look like HU", "--allow_unusual_values"],
         setup=_npy(np.linspace(0, 0.02, 2 * 32 * 32).reshape(2, 32, 32)), absent=["o.npy"]),
    Case("denoise-npy-stored-values", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 3,
         ["does not look like HU", "RescaleIntercept"],
         setup=_npy(_slices(None, None) + 1024), absent=["o.npy"]),
    Case("denoise-npy-complex", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 3,
         ["complex64", "real numbers in HU"],
         setup=_raw(lambda tmp: np.save(tmp / "in.npy", _slices(None).astype(np.complex64))),
         absent=["o.npy"]),
    Case("denoise-nifti-non-square-pixels", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.nii.gz", "--output={tmp}/o.nii.gz"], 3,
         ["pixel spacing 0.7 x 0.175 mm", "--allow_other_spacing"], setup="nifti_non_square",
         absent=["o.nii.gz"]),
    Case("denoise-mri-model-on-hu", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 3,
         ["is CT data", "this model is for MRI", "fastMRI"], setup="mri_model",
         absent=["o.npy"]),
    Case("denoise-ct-dicom-to-an-mri-model", "denoise",
         ["--model={tmp}/model", "--input={tmp}/series", "--output={tmp}/out"], 3,
         ["is CT data", "this model is for MRI"], setup="mri_model_dicom", absent=["out"]),
    Case("denoise-dicom-mixed-slice-thickness", "denoise",
         ["--model={model}", "--input={tmp}/series", "--output={tmp}/out"], 3,
         ["mixes slice thicknesses", "1.25 mm"], setup=_dicom(_set("SliceThickness", 1.25)),
         absent=["out"]),
    # Damaged exported models: exit 4, naming the file.
    Case("denoise-model-without-params", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["params.npz is missing"], setup="no_params", absent=["o.npy"]),
    Case("denoise-model-without-function", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["model.jaxexport is missing"], setup="no_function", absent=["o.npy"]),
    Case("denoise-model-truncated-params", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["params.npz differs from what was exported"], setup="truncated_params",
         absent=["o.npy"]),
    Case("denoise-model-invalid-manifest", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["manifest.json cannot be read"], setup="invalid_manifest", absent=["o.npy"]),
    Case("denoise-model-changed-function", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["model.jaxexport differs from what was exported"], setup="changed_function",
         absent=["o.npy"]),
    Case("denoise-model-garbage-function", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["model.jaxexport cannot be read as an exported function"], setup="garbage_function",
         absent=["o.npy"]),
    Case("denoise-model-parameter-missing", "denoise",
         ["--model={tmp}/model", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 4,
         ["params.npz holds", "missing p0003"], setup="parameter_missing", absent=["o.npy"]),
    # Outputs that cannot be written: refused before the work (exit 7).
    Case("denoise-output-under-a-file", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/f/o.npy"], 7,
         ["is a file, not a folder"],
         setup=lambda tmp: (_npy(_slices(None))(tmp), (tmp / "f").write_text("x"))),
    Case("export-out-under-a-file", "export", ["--workdir={run}", "--out={tmp}/f/m"], 7,
         ["is a file, not a folder"], setup=_file("f")),
    Case("train-workdir-under-a-file", "train.py", ["--workdir={tmp}/f/w"], 7,
         ["is a file, not a folder"], setup=_file("f")),
    Case("evaluate-out-under-a-file", "evaluate.py", ["--runs={run}", "--out={tmp}/f/o"], 7,
         ["is a file, not a folder"], setup=_file("f")),
    Case("denoise-output-without-npy-suffix", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/o"], 2,
         ["--output", ".npy"], setup=_npy(_slices(None)), absent=["o", ".o.npy"]),
    # Unreadable inputs.
    Case("denoise-npy-truncated", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 3,
         ["in.npy", "cannot be read as a NumPy array file"], setup=_truncated_numpy("in.npy"),
         absent=["o.npy"]),
    Case("denoise-npz-truncated", "denoise",
         ["--model={model}", "--input={tmp}/in.npz", "--output={tmp}/o.npy"], 3,
         ["in.npz", "cannot be read as a NumPy array file"], setup=_truncated_numpy("in.npz"),
         absent=["o.npy"]),
    Case("denoise-nifti-truncated", "denoise",
         ["--model={model}", "--input={tmp}/in.nii.gz", "--output={tmp}/o.nii.gz"], 3,
         ["in.nii.gz", "cannot be read as NIfTI"], setup=_truncated_nifti,
         absent=["o.nii.gz"]),
    Case("denoise-npy-no-slices", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 3,
         ["is empty"], setup=_npy(np.zeros((0, 32, 32))), absent=["o.npy"]),
    Case("denoise-npy-pickled-objects", "denoise",
         ["--model={model}", "--input={tmp}/in.npy", "--output={tmp}/o.npy"], 3,
         ["cannot be read as a NumPy array file", "objects"],
         setup=_raw(lambda tmp: np.save(tmp / "in.npy", np.array([{"a": 1}], dtype=object),
                                        allow_pickle=True)), absent=["o.npy"]),
]


# --- running a case ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished tiny noise2noise run, its exported model and an earlier evaluation."""
    root = tmp_path_factory.mktemp("world")
    config = tiny.get_config()
    config.train.tensorboard = config.train.progress = False
    config.train.num_steps = 3
    config.loss.kind, config.loss.beta_r = "noise2noise", 0.0
    experiment.fit(config, root / "run")
    assert cj_export.main(["export", f"--workdir={root / 'run'}", f"--out={root / 'model'}"]) == 0
    evaluation.evaluate([root / "run"], root / "out")
    return {"run": root / "run", "model": root / "model", "out": root / "out"}


#: name -> (which part of the world it starts from, the setup it makes from that part)
SETUPS = {"config_only": ("run", _config_only), "damaged": ("run", _damaged_copy),
          "bad_manifest": ("model", _bad_manifest), "two_places": ("run", _two_places),
          "no_params": ("model", _edited_model(lambda f, m: (f / "params.npz").unlink())),
          "no_function": ("model", _edited_model(lambda f, m: (f / "model.jaxexport").unlink())),
          "truncated_params": ("model", _edited_model(lambda f, m: _truncate(f, "params.npz"))),
          "invalid_manifest": ("model", _edited_model(
              lambda f, m: (f / "manifest.json").write_text('{"format_version": 2, '))),
          "garbage_function": ("model", _edited_model(
              lambda f, m: (f / "model.jaxexport").write_bytes(b"garbage" * 100), rehash=True)),
          "changed_function": ("model", _edited_model(
              lambda f, m: (f / "model.jaxexport").write_bytes(b"garbage" * 100))),
          "parameter_missing": ("model", _edited_model(_drop_parameter, rehash=True)),
          "mri_model": ("model", _edited_model(_modality("mri"))),
          "mri_model_dicom": ("model", _edited_model(
              _modality("mri"), then=lambda tmp: dicom_series(tmp / "series"))),
          "nifti_non_square": ("model", _edited_model(_trained_at(0.7),
                                                      then=_nifti((0.7, 0.175)))),
          }


def _tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (hidden ones too) -> its SHA-1."""
    if path.is_file():
        return {".": hashlib.sha1(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _run(case: Case, args: list[str], capsys) -> tuple[int, str]:
    if case.command in IN_PROCESS:
        capsys.readouterr()
        code = IN_PROCESS[case.command]([case.command, *args] if case.command in
                                        ("export", "denoise") else args)
        return code, capsys.readouterr().err
    env = {k: v for k, v in os.environ.items() if k != errors.VERBOSE_ENV}
    result = subprocess.run([sys.executable, *case.command.split(), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=env)
    return result.returncode, result.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, world, tmp_path, capsys):
    setup = case.setup
    if isinstance(setup, str):
        part, make = SETUPS[setup]
        setup = make(world[part])
    if setup is not None:
        setup(tmp_path)
    fill = {**{k: str(v) for k, v in world.items()}, "tmp": str(tmp_path)}
    own_config = any(a.startswith("--config=") for a in case.args)
    base = TRAIN[1:] if case.command == "train.py" and not own_config else []
    args = [a.format(**fill) for a in base + case.args]
    before = {k: _tree(v) for k, v in world.items()}
    inputs = _tree(tmp_path)

    code, err = _run(case, args, capsys)

    assert code == case.code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Error: "))
    end = next(i for i, line in enumerate(lines) if line.startswith("(exit status"))
    message = "\n".join(lines[start:end])  # one message (a config diff spans lines)
    for word in case.words:
        assert word in message, (word, message)
    assert f"exit status {case.code}" in err
    # Earlier results (the run, its model, its evaluation) and the inputs are untouched, and
    # nothing new is left beside them.
    assert {k: _tree(v) for k, v in world.items()} == before
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k in inputs} == inputs
    for name in case.absent:
        assert not (tmp_path / name).exists(), name
    leftovers = [k for k in after if k not in inputs and ("tmp" in k or "incomplete" in k)]
    assert not leftovers, leftovers


def test_the_catalogue_is_broad():
    assert len(CASES) >= 40
    kinds = {c.command for c in CASES}
    assert {"train.py", "evaluate.py", "ablation.py", "demo.py", "export", "denoise", "prep_ct",
            "prep_mri", "-m data_prep.ct"} <= kinds
    assert {c.code for c in CASES} == {2, 3, 4, 5, 6, 7}


def test_verbose_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
         "--config.train.batch_size=0", "--verbose"], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError: train.batch_size=0" in result.stderr
