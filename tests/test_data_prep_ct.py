"""The ct_consensus builder writes TFRecord shards that read back with the right physics."""

import json

import ml_collections
import numpy as np
import pytest

from configs.data import ct as data_config
from consensus_jax import input_pipeline
from consensus_jax.errors import ConfigError, InputError, UserError
from data_prep import cli
from data_prep import ct as prep
from data_prep.ct_consensus import ct_consensus_dataset_builder as builder_lib


def _config(preset="tiny", **changes):
    """The builder config of configs/data/ct.py:<preset> with ``changes`` (and a new name)."""
    config = data_config.get_config(preset)
    config.update(changes)
    return cli.builder_config(prep.CT, config, preset)


def _data_cfg(data_dir):
    return ml_collections.ConfigDict({"name": "ct_consensus", "config": "tiny",
                                      "data_dir": str(data_dir), "train_split": "train",
                                      "test_split": "test", "max_train_slices": 0})


def test_reads_back_split_by_patient(tiny_ct_data_dir):
    cfg = _data_cfg(tiny_ct_data_dir)
    train = input_pipeline.load_split(cfg, "train", "ct")
    test = input_pipeline.load_split(cfg, "test", "ct")
    preset = builder_lib.PRESETS["tiny"]
    assert train["x1"].shape == (2 * 3, 64, 64, 1) and test["x1"].shape == (3, 64, 64, 1)
    assert set(np.unique(train["patient_id"])) == {0, 1}
    assert set(np.unique(test["patient_id"])) == {2}
    assert preset.num_train_patients == 2
    # FBP is linear and each half is normalised by its own views: x_est = (x1 + x2) / 2.
    np.testing.assert_allclose(test["x_est"], 0.5 * (test["x1"] + test["x2"]), atol=2e-4)
    # HU / 1000: air is -1 in the source image, soft tissue near 0.
    assert test["x_true"].min() == pytest.approx(-1.0, abs=1e-3)
    np.testing.assert_array_equal(test["x_ref"], test["x_full"])
    noise = 1000 * (test["x_est"] - test["x_full"])
    assert 5 < np.sqrt(np.mean(noise ** 2)) < 60
    meta = input_pipeline.dataset_metadata(cfg)
    assert meta["dose_fraction"] == 0.25 and meta["geometry_kind"] == "fan"


def test_split_diagnostic_and_tv_baselines_written(tiny_ct_data_dir):
    root = input_pipeline.dataset_dir(_data_cfg(tiny_ct_data_dir))
    report = json.loads((root / "split_diagnostic.json").read_text())
    assert abs(report["halves"]["mean_n1"]) < 5 and abs(report["halves"]["mean_n2"]) < 5
    # Binomial thinning: full- and quarter-dose noise correlate like sqrt(0.25) = 0.5.
    assert 0.35 < report["full_vs_low_dose"]["correlation"] < 0.65
    with np.load(root / "baselines_test.npz") as f:
        assert f["TV"].shape == (3, 64, 64, 1)
        assert float(f["meta_tv_lambda_mm"]) > 0


def test_rerun_reuses_finished_output(tiny_ct_data_dir, capsys):
    root = input_pipeline.dataset_dir(_data_cfg(tiny_ct_data_dir))
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    prep.main(["--config=tiny", f"--data_dir={tiny_ct_data_dir}"])
    assert "Reusing the finished dataset" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before


def test_interrupted_build_never_loads_as_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = builder_lib.load_slices

    def failing(config, source):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("simulated interruption")
        return original(config, source)

    monkeypatch.setattr(builder_lib, "load_slices", failing)
    with pytest.raises(KeyboardInterrupt):
        prep.main(["--config=tiny", f"--data_dir={tmp_path}", "--nobaselines"])
    cfg = _data_cfg(tmp_path)
    with pytest.raises(FileNotFoundError, match="no complete dataset|No prepared dataset"):
        input_pipeline.load_split(cfg, "train", "ct")


def test_changed_presets_need_a_new_name(tmp_path):
    with pytest.raises(ConfigError, match=r"photons_per_ray: preset 13000.0, now 1000.0"):
        _config(photons_per_ray=1e3)
    cfg = _config(photons_per_ray=1e3, name="tiny_lowdose")
    assert cfg.photons_per_ray == 1e3 and cfg.name == "tiny_lowdose"
    assert cfg.description == "tiny with {'photons_per_ray': 1000.0}"
    assert cfg.version == builder_lib.PRESETS["tiny"].version
    assert _config() is builder_lib.PRESETS["tiny"]
    with pytest.raises(ConfigError, match="the settings are the 'tiny' preset's"):
        _config(name="tiny_again")
    # Through the command line: short and long spellings, and one message per error.
    for argv, match in [
            (["--config=tiny", "--config.photons_per_ray=1e3"], "differ from the 'tiny' preset"),
            (["--config=configs/data/ct.py:tiny", "--config.photons=1"], "no field 'photons'"),
            (["--config=huge"], r"Unknown data preset 'huge': choose one of \['dicom', "),
            (["--config=configs/data/ct.py:huge"], "Unknown data preset 'huge'"),
            (["--config=tiny", f"--manual_dir={tmp_path / 'none'}"], "is not a folder")]:
        with pytest.raises(UserError, match=match) as err:  # config or a missing folder
            prep.main([*argv, f"--data_dir={tmp_path}"])
        assert "Traceback" not in str(err.value)


def test_calibration_interpolates_the_paper_fbp_noise(capsys):
    """The sweep's RMSE falls roughly like I0^-1/2, and the suggested I0 gives the paper's
    27.6 HU when measured directly on the same slices (another noise draw)."""
    config = _config()
    photons = [1e4, 4e4]
    result = prep.calibrate(config, photons, slices_per_patient=1)
    rmse = np.asarray(result["rmse_hu"]["all"])
    assert rmse[0] / rmse[1] == pytest.approx(2.0, rel=0.1)  # photon starvation adds a little
    assert rmse[0] > prep.PAPER_FBP_RMSE_HU > rmse[1]  # bracketed: log-log interpolation
    again = prep.calibrate(config, [result["suggested_photons"]], slices_per_patient=1)
    assert again["rmse_hu"]["all"][0] == pytest.approx(prep.PAPER_FBP_RMSE_HU, rel=0.03)
    out = capsys.readouterr().out
    assert "| train slices | test slices |" in out and "I0 for 27.6 HU" in out


def test_reuse_refuses_a_dataset_built_with_other_settings(tiny_ct_data_dir):
    """A finished dataset whose stored settings differ from the preset (e.g. a recalibrated I0)
    is not reused silently."""
    from data_prep import check_reused_dataset

    config = _config()
    from data_prep.splits import VERSION

    folder = tiny_ct_data_dir / "ct_consensus" / "tiny" / VERSION
    check_reused_dataset(folder, config.metadata())  # what the builder wrote: accepted
    changed = _config(photons_per_ray=1e4, name="tiny_i0")
    with pytest.raises(ConfigError,
                       match=r"photons_per_ray_full_dose: stored 13000.0, now 10000.0"):
        check_reused_dataset(folder, changed.metadata())


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_validation_patients_are_whole_and_leave_train_and_test_unchanged(modality):
    import dataclasses

    if modality == "ct":
        from data_prep.ct_consensus.ct_consensus_dataset_builder import PRESETS, list_patients
    else:
        from data_prep.mri_consensus.mri_consensus_dataset_builder import PRESETS, list_patients
    preset = PRESETS["quick"]
    with_val = list_patients(preset, None)
    without = list_patients(dataclasses.replace(preset, num_validation_patients=0), None)
    by_split = {s: [p for p in with_val if p.split == s] for s in ("train", "test", "validation")}
    assert len(by_split["validation"]) == preset.num_validation_patients >= 1
    assert by_split["train"] + by_split["test"] == without
    ids = {s: {p.patient_id for p in v} for s, v in by_split.items()}
    assert not (ids["validation"] & (ids["train"] | ids["test"]))


def test_extra_training_patients_leave_every_other_patient_unchanged():
    import dataclasses

    from data_prep.ct_consensus.ct_consensus_dataset_builder import PRESETS, list_patients

    preset = PRESETS["quick"]
    base = list_patients(preset, None)
    more = list_patients(dataclasses.replace(preset, extra_train_patients=3), None)
    assert more[:len(base)] == base
    extra = more[len(base):]
    assert [p.split for p in extra] == ["train"] * 3
    assert len({p.patient_id for p in more}) == len(more)
    with pytest.raises(ValueError, match="extra_train_patients=-1"):
        list_patients(dataclasses.replace(preset, extra_train_patients=-1), None)


def test_calibrate_cli_rejects_bad_photons():
    from data_prep import ct as prep

    with pytest.raises(ConfigError, match="--photons: positive numbers"):
        prep.main(["--config=tiny", "--calibrate", "--photons=1e4,zero"])


@pytest.mark.parametrize("change, words", [
    ("--config.photons_per_ray=-5", "--config.photons_per_ray=-5.0: must be a positive number"),
    ("--config.dose_fraction=1.5", "--config.dose_fraction=1.5: must lie in (0, 1]"),
    ("--config.num_views=1", "--config.num_views=1: must be a whole number >= 2"),
    ("--config.geometry=cone", "--config.geometry='cone': must be 'fan' or 'parallel'"),
])
def test_values_out_of_range_are_refused_before_building(tmp_path, change, words):
    for name in ([], ["--config.name=changed"]):  # named or not: the range first
        with pytest.raises(ConfigError) as err:
            prep.main(["--config=tiny", change, *name, f"--data_dir={tmp_path / 'd'}"])
        assert words in str(err.value)
    assert not (tmp_path / "d").exists()


def test_a_failed_build_removes_only_the_folders_it_created(tmp_path, monkeypatch):
    """A build that fails inside TFDS leaves no empty dataset folder behind, and never removes
    what was there before it."""
    def failing(config, source):
        raise InputError(f"patient {source.patient}: simulated bad file")

    monkeypatch.setattr(builder_lib, "load_slices", failing)
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match="simulated bad file"):
        prep.main(["--config=tiny", f"--data_dir={fresh}", "--nobaselines"])
    assert not fresh.exists()
    used = tmp_path / "used"
    (used / "ct_consensus" / "other" / "1.0.0").mkdir(parents=True)
    (used / "ct_consensus" / "other" / "1.0.0" / "keep.txt").write_text("an earlier dataset")
    (used / "notes.txt").write_text("the user's")
    before = sorted(str(p.relative_to(used)) for p in used.rglob("*"))
    with pytest.raises(InputError, match="simulated bad file"):
        prep.main(["--config=tiny", f"--data_dir={used}", "--nobaselines"])
    assert sorted(str(p.relative_to(used)) for p in used.rglob("*")) == before


def test_a_numpy_stack_without_pixel_size_names_the_file_and_both_fixes(tmp_path):
    import dataclasses

    stack = np.linspace(-1000.0, 400.0, 2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16)
    np.save(tmp_path / "p0.npy", stack)
    np.savez(tmp_path / "p1.npz", hu=stack, pixel_size_mm=0.5)
    config = builder_lib.PRESETS["numpy"]
    with pytest.raises(InputError) as err:
        builder_lib._read_volume(config, tmp_path / "p0.npy")
    message = str(err.value)
    assert str(tmp_path / "p0.npy") in message
    assert "--config.numpy_pixel_size_mm=0.7 --config.name=" in message
    assert "pixel_size_mm=0.7)" in message and "read_numpy_stack" not in message
    given = dataclasses.replace(config, name="numpy_07", numpy_pixel_size_mm=0.7)
    assert builder_lib._read_volume(given, tmp_path / "p0.npy").pixel_size_mm == 0.7
    assert builder_lib._read_volume(given, tmp_path / "p1.npz").pixel_size_mm == 0.5  # stored
    assert given.metadata()["numpy_pixel_size_mm"] == 0.7
    assert "numpy_pixel_size_mm" not in config.metadata()  # older datasets' metadata unchanged
    with pytest.raises(ConfigError, match=r"--config.numpy_pixel_size_mm=-1.0: must be a "):
        dataclasses.replace(config, numpy_pixel_size_mm=-1.0).validate()
