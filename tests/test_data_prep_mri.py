"""The mri_consensus builder writes TFRecord shards that read back with the right physics."""

import json
import sys

import h5py
import jax
import ml_collections
import numpy as np
import pytest

from configs.data import mri as data_config
from consensus_jax import features, input_pipeline
from consensus_jax.errors import ConfigError, MissingInputError
from consensus_jax.mri.simulate import simulate_slice
from data_prep import cli
from data_prep import mri as prep
from data_prep.mri_consensus import mri_consensus_dataset_builder as builder_lib

TINY = builder_lib.PRESETS["tiny"]


def _config(preset="tiny", **changes):
    """The builder config of configs/data/mri.py:<preset> with ``changes`` (and a new name)."""
    config = data_config.get_config(preset)
    config.update(changes)
    return cli.builder_config(prep.MRI, config, preset)


def _data_cfg(data_dir, config="tiny"):
    return ml_collections.ConfigDict({"name": "mri_consensus", "config": config,
                                      "data_dir": str(data_dir), "train_split": "train",
                                      "test_split": "test", "max_train_slices": 0})


@pytest.fixture(scope="module")
def tiny(tiny_mri_data_dir):
    cfg = _data_cfg(tiny_mri_data_dir)
    return (input_pipeline.load_split(cfg, "train", "mri"),
            input_pipeline.load_split(cfg, "test", "mri"))


def test_reads_back_split_by_patient(tiny, tiny_mri_data_dir):
    train, test = tiny
    for key in ("x1", "x2", "x_est", "x_zf", "x_ref", "x_clean"):
        assert train[key].shape == (6, 64, 64, 2) and test[key].shape == (3, 64, 64, 2)
    assert set(np.unique(train["patient_id"])) == {0, 1}
    assert set(np.unique(test["patient_id"])) == {2}
    assert set(test["patient"]) == {b"knee-0002"}
    # The scale maps SENSE into [-1, 1] and reaches the bound on every slice.
    peak = np.max(np.abs(np.concatenate([train["x_est"], test["x_est"]])), axis=(1, 2, 3))
    np.testing.assert_allclose(peak, 1.0, atol=1e-6)
    assert np.all(train["scale"] > 0)
    meta = input_pipeline.dataset_metadata(_data_cfg(tiny_mri_data_dir))
    assert meta["num_coils"] == 4 and meta["acceleration"] == 4.0
    assert meta["num_center_lines"] == 8 and meta["mask_convention"] == "outer"
    assert meta["sense_iterations"] == 30 and "scale" in meta["normalisation"]


def test_masks_keep_the_centre_lines_and_sample_a_quarter_of_the_rest(tiny):
    masks = np.concatenate([t["mask"] for t in tiny])
    assert masks.shape == (9, 64) and masks.dtype == np.uint8
    centre = np.zeros(64, bool)
    centre[28:36] = True  # 8 lines around ky = 0 at column 32
    assert np.all(masks[:, centre] == 1)
    # 9 x 56 outer lines, each sampled with probability 1/4: 126 +- 10 expected.
    assert 95 < masks[:, ~centre].sum() < 157
    assert len({m.tobytes() for m in masks}) == 9  # a different mask per slice


def test_references_share_the_scale_and_carry_the_simulated_noise(tiny):
    _, test = tiny
    source = [p for p in builder_lib.list_patients(TINY, None) if p.split == "test"][0]
    images = builder_lib.load_images(TINY, source)
    for i, image in enumerate(images):
        support = np.any(test["x_ref"][i] != 0, axis=-1)
        noise = (test["x_ref"][i] - test["x_clean"][i])[support] * test["scale"][i]
        # Complex noise of std sigma = max|x| / snr per k-space sample stays sigma per pixel
        # (orthonormal FFT, maps with unit root-sum-of-squares): sigma / sqrt(2) per channel.
        sigma = image.max() / TINY.snr
        assert np.std(noise) == pytest.approx(sigma / np.sqrt(2), rel=0.08)
        amplitude = np.sqrt(np.sum(test["x_clean"][i] ** 2, axis=-1)) * test["scale"][i]
        assert amplitude.max() == pytest.approx(image.max(), rel=0.1)


def test_slice_is_reproducible_from_its_key(tiny):
    _, test = tiny
    source = [p for p in builder_lib.list_patients(TINY, None) if p.split == "test"][0]
    i = 1
    index = int(test["slice_index"][i])
    image = builder_lib.load_images(TINY, source)[source.slice_indices.index(index)]
    out = simulate_slice(jax.numpy.asarray(image), builder_lib.slice_key(TINY, 2, index),
                         TINY.coil_simulation(), TINY.reconstruction())
    for key in ("x1", "x2", "x_est", "x_zf", "x_ref", "x_clean"):
        np.testing.assert_allclose(test[key][i], out[key], atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(test["mask"][i], out["mask"])


def test_split_diagnostic_written(tiny_mri_data_dir):
    root = input_pipeline.dataset_dir(_data_cfg(tiny_mri_data_dir))
    report = json.loads((root / "split_diagnostic.json").read_text())
    h = report["halves_vs_fully_sampled"]
    assert abs(h["mean_n1"]) < 0.05 * h["std_n1"] and abs(h["mean_n2"]) < 0.05 * h["std_n2"]
    # Outer-line errors of the halves anti-correlate, -1 / (2R - 1) in expectation.
    assert report["expected_outer_line_correlation"] == pytest.approx(-1 / 7)
    assert -0.35 < h["correlation"] < -0.03
    rmse = report["rmse_1e3"]["fully sampled"]
    assert rmse["SENSE"] < rmse["Zero-filling"] < rmse["half x1 (amplified)"]
    assert report["num_slices"] == {"train": 6, "test": 3}


def test_rerun_reuses_finished_output(tiny_mri_data_dir, capsys):
    root = input_pipeline.dataset_dir(_data_cfg(tiny_mri_data_dir))
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    prep.main(["--config=tiny", f"--data_dir={tiny_mri_data_dir}"])
    out = capsys.readouterr().out
    assert "Reusing the finished dataset" in out and "corr(n1, n2)" in out
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before


def test_interrupted_build_never_loads_as_complete(tmp_path, monkeypatch):
    def interrupted(config, source):
        zeros = np.zeros((64, 64, 2), np.float32)
        yield 0, {**{k: zeros for k in ("x1", "x2", "x_est", "x_zf", "x_ref", "x_clean")},
                  "scale": np.float32(1), "mask": np.zeros(64, np.uint8),
                  **features.mri_heldout_example(64, 64)}
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(builder_lib.Builder, "patient_examples", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        prep.main(["--config=tiny", f"--data_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no complete dataset|No prepared dataset"):
        input_pipeline.load_split(_data_cfg(tmp_path), "train", "mri")


def test_changed_configs_and_source_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="differ from the 'tiny' preset"):
        _config(snr=30.0)
    cfg = _config(snr=30.0, mask_convention="fastmri", name="tiny_snr30")
    assert cfg.snr == 30 and cfg.mask_convention == "fastmri" and cfg.name == "tiny_snr30"
    with pytest.raises(ConfigError, match="no field 'coils'"):
        prep.main(["--config=tiny", "--config.coils=3", "--config.name=x"])
    with pytest.raises(ConfigError, match="square"):
        _config(width_px=48, name="x")
    with pytest.raises(ConfigError, match="square"):
        prep.main(["--config=configs/data/mri.py:tiny", "--config.width_px=48",
                   "--config.name=x", f"--data_dir={tmp_path}"])
    with pytest.raises(MissingInputError, match="--manual_dir"):
        prep.main(["--config=fastmri", f"--data_dir={tmp_path}"])
    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(ConfigError, match=r"pip install -e \.\[mri-data\]"):
        prep.main(["--config=mni", f"--data_dir={tmp_path}"])


# ------------------------------------------------------------------------------------------
# fastMRI: tiny fake multi-coil files (readout 2x oversampled, zero-padded ky edges).

KX, H, COILS = 64, 32, 4


def _header(ky, centre, maximum):
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace><matrixSize><x>{KX}</x><y>{ky}</y><z>1</z></matrixSize></encodedSpace>
    <reconSpace><matrixSize><x>{H}</x><y>{H}</y><z>1</z></matrixSize></reconSpace>
    <encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum>
    <center>{centre}</center></kspace_encoding_step_1></encodingLimits>
  </encoding>
</ismrmrdHeader>"""


def _fake_file(path, seed, ky, acquired, slices=2):
    """Coil k-space of smooth random objects in the central H of the KX readout rows."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.linspace(-1, 1, KX), np.linspace(-1, 1, ky), indexing="ij")
    coils = [np.exp(-((rows - 0.3 * np.cos(a)) ** 2 + (cols - np.sin(a)) ** 2))
             * np.exp(1j * a) for a in np.linspace(0, 2 * np.pi, COILS, endpoint=False)]
    kspace = []
    for _ in range(slices):
        blob = sum(rng.uniform(0.3, 1) * np.exp(-((rows * 2 - rng.uniform(-0.3, 0.3)) ** 2
                                                  + (cols - rng.uniform(-0.4, 0.4)) ** 2)
                                                 / rng.uniform(0.02, 0.1)) for _ in range(6))
        img = np.stack(coils) * blob
        k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"),
                            axes=(-2, -1))
        k[..., :acquired[0]] = 0
        k[..., acquired[1]:] = 0
        kspace.append(k)
    centre = ky // 2 - acquired[0]
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.stack(kspace).astype(np.complex64))
        f["ismrmrd_header"] = _header(ky, centre, acquired[1] - acquired[0] - 1)
    return np.stack(kspace)


def _numpy_rss(kspace, width):
    """Root-sum-of-squares image [S, H, width] of readout-cropped, width-fitted k-space."""
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"),
                          axes=(-2, -1))
    img = img[..., (KX - H) // 2:(KX + H) // 2, :]
    ky = kspace.shape[-1]
    k = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(img, axes=-1), axis=-1, norm="ortho"),
                        axes=-1)
    shift = width // 2 - ky // 2
    fitted = np.zeros((*k.shape[:-1], width), complex)
    lo, hi = max(0, shift), min(width, ky + shift)
    fitted[..., lo:hi] = k[..., lo - shift:hi - shift]
    coil = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(fitted, axes=-1), axis=-1, norm="ortho"),
                           axes=-1)
    return np.sqrt(np.sum(np.abs(coil) ** 2, axis=1))


def test_fastmri_files_build_and_read_back(tmp_path):
    manual = tmp_path / "knee"
    manual.mkdir()
    # Two files of 40 ky columns (acquired [4, 36)) and one of 42 (acquired [5, 37)): the
    # builder moves ky = 0 to column 20 of 40, so every file's acquired range becomes [4, 36).
    kspaces = {f"file100000{i}": _fake_file(manual / f"file100000{i}.h5", i, ky, acq)
               for i, (ky, acq) in enumerate([(40, (4, 36)), (42, (5, 37)), (40, (4, 36))])}
    changes = ["height_px=32", "width_px=40", "num_center_lines=8", "num_train_patients=2",
               "num_test_patients=1", "num_validation_patients=0", "sense_iterations=10",
               "name=fake_fastmri"]
    argv = ["--config=fastmri", f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={manual}"
            ] + [f"--config.{c}" for c in changes]
    assert prep.main(argv) == 0
    cfg = _data_cfg(tmp_path / "tfds", "fake_fastmri")
    train = input_pipeline.load_split(cfg, "train", "mri")
    test = input_pipeline.load_split(cfg, "test", "mri")
    assert train["x1"].shape == (4, 32, 40, 2) and test["x1"].shape == (2, 32, 40, 2)
    patients = {p.decode() for p in np.concatenate([train["patient"], test["patient"]])}
    assert patients == set(kspaces)
    assert not set(train["patient"]) & set(test["patient"])
    masks = np.concatenate([train["mask"], test["mask"]])
    assert not masks[:, :4].any() and not masks[:, 36:].any() and masks[:, 16:24].all()
    np.testing.assert_array_equal(train["x_clean"], train["x_ref"])
    for split in (train, test):
        for i, (name, index) in enumerate(zip(split["patient"], split["slice_index"],
                                              strict=True)):
            rss = _numpy_rss(kspaces[name.decode()][index][None], 40)[0]
            amp = np.sqrt(np.sum(split["x_ref"][i] ** 2, axis=-1)) * split["scale"][i]
            support = amp > 0
            # Sensitivity-weighted combination with accurate maps equals the coil RSS.
            rel = np.linalg.norm((amp - rss)[support]) / np.linalg.norm(rss[support])
            assert rel < 0.1
            assert support.mean() > 0.1


def test_fastmri_width_that_cuts_acquired_columns_is_refused(tmp_path):
    _fake_file(tmp_path / "a.h5", 0, 40, (4, 36), slices=1)
    _fake_file(tmp_path / "b.h5", 1, 40, (4, 36), slices=1)
    config = _config("fastmri", height_px=32, width_px=24, num_center_lines=8,
                     num_train_patients=1, num_test_patients=1, num_validation_patients=0,
                     name="narrow")
    with pytest.raises(ValueError, match="width_px=24"):
        builder_lib.list_patients(config, tmp_path)


@pytest.mark.parametrize("change, words", [
    ("--config.snr=-5", "--config.snr=-5.0: must be a positive number"),
    ("--config.acceleration=0.5", "--config.acceleration=0.5: must be a number > 1"),
    ("--config.num_coils=0", "--config.num_coils=0: must be a whole number >= 1"),
    ("--config.map_threshold=1.5", "--config.map_threshold=1.5: must lie in [0, 1)"),
])
def test_values_out_of_range_are_refused_before_building(tmp_path, change, words):
    for name in ([], ["--config.name=changed"]):  # named or not: the range first
        with pytest.raises(ConfigError) as err:
            prep.main(["--config=tiny", change, *name, f"--data_dir={tmp_path / 'd'}"])
        assert words in str(err.value)
    assert not (tmp_path / "d").exists()


def test_extra_training_patients_leave_every_other_patient_unchanged():
    import dataclasses

    quick = builder_lib.PRESETS["quick"]
    base = builder_lib.list_patients(quick, None)
    more_config = dataclasses.replace(quick, extra_train_patients=3)
    more = builder_lib.list_patients(more_config, None)
    assert more[:len(base)] == base  # same ids, splits, slices and so the same slice keys
    assert [p.split for p in more[len(base):]] == ["train"] * 3
    assert len({p.patient_id for p in more}) == len({p.location for p in more}) == len(more)
    assert more_config.metadata()["extra_train_patients"] == 3
    test_patient = next(p for p in base if p.split == "test")
    np.testing.assert_array_equal(builder_lib.load_images(quick, test_patient),
                                  builder_lib.load_images(more_config, test_patient))
    with pytest.raises(ConfigError, match="extra_train_patients=-1"):
        dataclasses.replace(quick, extra_train_patients=-1).validate()
    with pytest.raises(ConfigError, match="mni source divides one template"):
        dataclasses.replace(builder_lib.PRESETS["mni"], extra_train_patients=2).validate()
