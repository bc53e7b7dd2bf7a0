"""Ablation grid settings: dotted config overrides on a copy of the base config."""

import ml_collections
import pytest

from consensus_jax.ablation import apply_overrides


def _base(locked):
    config = ml_collections.ConfigDict({"seed": 0, "loss": {"kind": "consensus", "beta_r": 0.5}})
    if locked:
        config.lock()
    return config


@pytest.mark.parametrize("locked", [False, True])
def test_overrides_change_a_copy_and_keep_its_lock(locked):
    base = _base(locked)
    config = apply_overrides(base, {"loss.beta_r": 0.0, "loss.kind": "noise2noise", "seed": 2})
    assert (config.loss.beta_r, config.loss.kind, config.seed) == (0.0, "noise2noise", 2)
    assert (base.loss.beta_r, base.loss.kind, base.seed) == (0.5, "consensus", 0)
    assert config.is_locked == locked


@pytest.mark.parametrize("key", ["loss.beta", "los.beta_r", "seeds", "seed.x"])
def test_unknown_keys_are_refused_by_name(key):
    with pytest.raises(ValueError, match=f"Ablation override '{key}': no such config key"):
        apply_overrides(_base(False), {key: 1.0})


# --- the K-way grid and what a step costs ------------------------------------------------

import json  # noqa: E402

import numpy as np  # noqa: E402

from configs import ablation as grids  # noqa: E402
from configs import tiny  # noqa: E402
from consensus_jax import ablation  # noqa: E402


def _tiny(**overrides):
    config = tiny.get_config()
    config.train.tensorboard = False
    config.train.progress = False
    return apply_overrides(config, overrides)


def test_k_way_grid_rows_train_k_networks_on_k_way_presets():
    grid = grids.get_grid("k_way")
    assert set(grid) == {"noise2clean", "noise2noise", "consensus K=2", "consensus K=3",
                         "consensus K=4", "noise2inverse K=2", "noise2inverse K=4"}
    for name, k, preset in (("consensus K=3", 3, "quick_k3"), ("consensus K=4", 4, "quick_k4"),
                            ("noise2inverse K=4", 4, "quick_k4")):
        assert grid[name]["data.num_splits"] == k and grid[name]["data.config"] == preset


def test_mri_overfitting_grid_changes_one_setting_of_the_long_mri_config():
    from configs import mri_quick_long
    from data_prep.mri_consensus.mri_consensus_dataset_builder import PRESETS

    base = mri_quick_long.get_config()
    assert base.train.num_steps == 4000 and not base.train.augment
    quick = PRESETS[base.data.config]
    for name, overrides in grids.get_grid("mri_overfitting").items():
        config = apply_overrides(base, overrides)  # refuses a key the config lacks
        pixels = config.train.batch_size * config.train.patch_size_px ** 2
        assert pixels == base.train.batch_size * base.train.patch_size_px ** 2, name
    whole = apply_overrides(base, grids.get_grid("mri_overfitting")["consensus full-width patches"])
    assert whole.train.patch_size_px == quick.width_px == quick.height_px


def test_step_cost_counts_k_networks_and_k_inputs():
    one = ablation.compiled_step_cost(_tiny(**{"loss.kind": "noise2clean",
                                               "loss.beta_r": 0.0}))
    pair = ablation.compiled_step_cost(_tiny())
    three = ablation.compiled_step_cost(_tiny(**{"data.num_splits": 3}))
    n2i = ablation.compiled_step_cost(_tiny(**{"loss.kind": "noise2inverse", "loss.beta_r": 0.0,
                                               "data.num_splits": 4}))
    assert (one["networks"], pair["networks"], three["networks"], n2i["networks"]) == (1, 2, 3, 1)
    assert pair["parameters"] == 2 * one["parameters"]
    assert three["parameters"] == 3 * one["parameters"]
    assert n2i["parameters"] == one["parameters"]
    # XLA's CPU backend reports the compiled step's buffers: more networks, more memory; the
    # arguments hold at least the parameters and Adam's two moments (float32).
    assert one["step_memory_bytes"] < pair["step_memory_bytes"] < three["step_memory_bytes"]
    for cost in (one, pair, three, n2i):
        assert cost["step_memory_parts_bytes"]["argument"] >= 3 * 4 * cost["parameters"]


def test_seconds_per_step_is_the_median_after_the_first_interval(tmp_path):
    rows = [{"step": 2, "patches_per_s": 1.0}, {"step": 4, "patches_per_s": 80.0},
            {"step": 4, "val/loss": 1.0}, {"step": 6, "patches_per_s": 40.0},
            {"step": 8, "patches_per_s": 16.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    # batch 8: 0.1, 0.2 and 0.5 s per step after the compiling first interval
    assert ablation.seconds_per_step(tmp_path, 8) == pytest.approx(0.2)
    assert ablation.seconds_per_step(tmp_path / "none", 8) is None


@pytest.mark.slow
def test_tiny_k_way_grid_runs_end_to_end_with_cost_columns(tmp_path):
    base = _tiny(**{"train.num_steps": 6, "train.eval_every_steps": 3,
                    "train.checkpoint_every_steps": 3, "train.log_every_steps": 2})
    out = ablation.run_grid(base, grids.get_grid("k_way"), [0], tmp_path / "runs",
                            tmp_path / "out")
    table = out.read_text()
    for name in ("noise2clean", "noise2noise", "consensus K=2", "consensus K=3",
                 "consensus K=4", "noise2inverse K=2", "noise2inverse K=4"):
        assert f"| {name}" in table
    assert "| setting | networks | parameters | s / step | XLA memory per step (MiB) |" in table
    result = json.loads((tmp_path / "out" / "ablation.json").read_text())
    costs = result["step_costs"]
    assert [costs[f"consensus K={k}"]["networks"] for k in (2, 3, 4)] == [2, 3, 4]
    assert costs["noise2inverse K=4"]["networks"] == 1
    for cost in costs.values():
        assert all(s is not None and 0 < s < 60 for s in cost["seconds_per_step"])
        assert cost["step_memory_bytes"] > 0
    # Every setting is scored against its own test split's references; the synthetic set
    # stores one image under every reference name, so it is scored once, as full-dose FBP.
    refs = {k.split(" vs ")[1] for row in result["rows"].values() for k in row}
    assert refs == {"full-dose FBP"}
    assert np.isfinite(result["rows"]["consensus K=3"]["RMSE (HU) vs full-dose FBP"][0][0])


def test_test_data_trains_on_the_base_set_and_scores_on_another_presets_test_split(
        tmp_path, tiny_mri_data_dir):
    import shutil
    from pathlib import Path

    from configs import mri_tiny
    from consensus_jax.errors import MissingInputError

    # Two copies of the tiny set: "tiny" without its test split, "tiny_other" without its
    # training split. The grid can only succeed by training on tiny and scoring on tiny_other.
    src = Path(tiny_mri_data_dir) / "mri_consensus" / "tiny"
    sets = tmp_path / "tfds" / "mri_consensus"
    for name, drop in (("tiny", "-test."), ("tiny_other", "-train.")):
        shutil.copytree(src, sets / name)
        dropped = list((sets / name).rglob(f"*{drop}*"))
        assert dropped
        for f in dropped:
            f.unlink()
    config = mri_tiny.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    config.train.tensorboard = config.train.progress = False
    config.train.num_steps = config.train.eval_every_steps = config.train.checkpoint_every_steps = 2
    out = ablation.run_grid(config, {"consensus": {}}, [0], tmp_path / "runs", tmp_path / "out",
                            test_data="tiny_other")
    assert ("runs trained on mri_consensus/tiny, scored on the test split of "
            "mri_consensus/tiny_other") in out.read_text()
    result = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert (result["trained_on"], result["scored_on"]) == ("mri_consensus/tiny",
                                                           "mri_consensus/tiny_other")
    assert {"consensus", "Zero-filling", "SENSE"} <= set(result["rows"])
    # The same finished run scored on its own test split: the missing shard is named.
    with pytest.raises(MissingInputError, match=r"lacks 1 of its files \(mri_consensus-test\."):
        ablation.run_grid(config, {"consensus": {}}, [0], tmp_path / "runs", tmp_path / "own")
