"""Shared fixtures. Tests use tiny images and tiny UNets; compiled functions are shared."""

import os

# Hide GPUs from TensorFlow (it is only used for TFRecord I/O) and keep its logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES_FOR_TF", "")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_ct_data_dir(tmp_path_factory):
    """The tiny built-in CT dataset, built once per session through the real CLI."""
    data_dir = tmp_path_factory.mktemp("tfds")
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.ct", "--config=tiny", f"--data_dir={data_dir}",
         "--tv_iterations=30"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return data_dir


@pytest.fixture(scope="session")
def tiny_mri_data_dir(tmp_path_factory):
    """The tiny built-in MRI dataset, built once per session through the real CLI."""
    data_dir = tmp_path_factory.mktemp("tfds_mri")
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.mri", "--config=tiny", f"--data_dir={data_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return data_dir


def train_tiny(workdir, kind="consensus", num_steps=3, mri=False, **data):
    """Trains a tiny run of ``kind`` for ``num_steps`` steps on synthetic data in ``workdir``
    (consensus with its config's beta_r, the other schemes with 0; ``data`` sets ``config.data``
    fields)
    and returns ``workdir``. MRI runs validate never (``eval_every_steps = 0``)."""
    from configs import mri_tiny, tiny
    from consensus_jax import experiment

    config = mri_tiny.get_config() if mri else tiny.get_config()
    config.train.tensorboard = config.train.progress = False
    config.train.num_steps = num_steps
    config.loss.kind = kind
    if kind != "consensus":
        config.loss.beta_r = 0.0
    if mri:
        config.data.name = "synthetic"
        config.train.eval_every_steps = 0
    for key, value in data.items():
        config.data[key] = value
    experiment.fit(config, workdir)
    return workdir


def dicom_series(folder, n=3, change=None):
    """A small CT series made from pydicom's shipped CT slice (128 x 128, 0.66 mm) in ``folder``;
    ``change(i, ds)`` may edit slice ``i`` before it is written. Returns ``folder``."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    series = generate_uid()
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * i]
        if change is not None:
            change(i, ds)
        ds.save_as(folder / f"slice{i}.dcm", enforce_file_format=True)
    return folder
