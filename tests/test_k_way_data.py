"""K-way splits in the prepared data: K = 2 unchanged bit for bit, K > 2 each subset unbiased.

The golden file tests/data/k2_golden.npz was written by ``python tests/test_k_way_data.py
<data_dir> tests/data/k2_golden.npz`` from the tiny CT and MRI presets built by the code before
the number of splits was a setting; it holds the SHA-256 of every decoded array of every split
and the decoded test split's first slice itself.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "data" / "k2_golden.npz"
DATASETS = {"ct": "ct_consensus", "mri": "mri_consensus"}


def _cpu_has_avx512() -> bool:
    """Float digits of XLA's CPU kernels depend on the instruction set; the hashes are compared
    only on a CPU of the golden file's kind (the first slice is compared to 1e-5 elsewhere)."""
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def decoded_arrays(data_dir: str | Path, modality: str) -> dict[str, np.ndarray]:
    """{"<split>/<feature>": array} of the tiny preset, read back as training reads it."""
    from consensus_jax import input_pipeline

    cfg = ml_collections.ConfigDict({"name": DATASETS[modality], "config": "tiny",
                                     "data_dir": str(data_dir), "train_split": "train"})
    out = {}
    for split in ("train", "test", "validation"):
        for k, v in input_pipeline._read_tfds(cfg, split).items():
            if v.dtype != object:
                out[f"{split}/{k}"] = v
    return out


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def write_golden(data_dir: str, path: str) -> None:
    arrays, hashes = {}, {}
    for modality in DATASETS:
        decoded = decoded_arrays(data_dir, modality)
        hashes[modality] = {k: _sha(v) for k, v in decoded.items()}
        for k, v in decoded.items():
            if k.startswith("test/") and v.ndim > 1:
                arrays[f"{modality}/{k}"] = v[:1]
    np.savez_compressed(path, hashes=json.dumps(hashes), avx512=_cpu_has_avx512(), **arrays)


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_k2_data_is_bit_for_bit_the_data_before_k_was_a_setting(modality, tiny_ct_data_dir,
                                                                tiny_mri_data_dir):
    data_dir = tiny_ct_data_dir if modality == "ct" else tiny_mri_data_dir
    golden = np.load(GOLDEN)
    decoded = decoded_arrays(data_dir, modality)
    hashes = json.loads(str(golden["hashes"]))[modality]
    # Every array of then is here; the only new ones are the MRI validation slices' held-out
    # k-space features (docs/validation.md), written after the golden file.
    from consensus_jax import features

    assert set(hashes) <= set(decoded)
    added = {k.split("/", 1)[1] for k in set(decoded) - set(hashes)}
    assert added <= {*features.MRI_HELDOUT_KEYS, "heldout_valid"}, added
    for key in (k for k in golden.files if k.startswith(f"{modality}/")):
        want, got = golden[key], decoded[key.split("/", 1)[1]][:1]
        if bool(golden["avx512"]) == _cpu_has_avx512():
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=key)
    if bool(golden["avx512"]) == _cpu_has_avx512():
        changed = [k for k, h in hashes.items() if _sha(decoded[k]) != h]
        assert not changed, changed


# --- CT: K interleaved view subsets --------------------------------------------------------


def test_interleaved_subsets_are_views_k_mod_k_and_k2_is_odd_even():
    from consensus_jax.ct import split

    for k in (2, 3, 4):
        subsets = split.view_subsets("odd_even", 30, None, num_splits=k)
        assert len(subsets) == k
        for j, views in enumerate(subsets):
            np.testing.assert_array_equal(views, [v for v in range(30) if v % k == j])
    odd, even = split.odd_even(30)
    pair = split.view_subsets("odd_even", 30, None, num_splits=2)
    np.testing.assert_array_equal(pair[0], odd)
    np.testing.assert_array_equal(pair[1], even)
    with pytest.raises(ValueError, match="odd_even"):
        split.view_subsets("random_pairwise", 30, jax.random.key(0), num_splits=3)


def test_ct_subset_fbps_are_unbiased_and_average_to_the_full_fbp():
    """Each subset's Hann FBP of noiseless projections equals the FBP of all views up to the
    angular sampling (a smooth Gaussian: < 1 % of its contrast), and FBP is linear, so the noise of
    every subset is zero-mean; the mean of the K subset FBPs is the FBP of all views exactly
    when every subset holds the same number of views (a parallel-beam sum over angles)."""
    from consensus_jax.ct import geometry as g
    from consensus_jax.ct import simulate

    grid = g.ImageGrid(48, 2.0)
    geom = g.ParallelBeamGeometry(image=grid, num_views=240, num_detectors=69,
                                  detector_spacing_mm=2.0, angular_range_rad=np.pi)
    yy, xx = np.mgrid[:48, :48] - 23.5
    # Air (mu = 0) around a Gaussian of 1200 HU contrast: no edges for the sparse angles to
    # streak from.
    hu = (-1000.0 + 1200.0 * np.exp(-(xx ** 2 + yy ** 2) / (2 * 7.0 ** 2))).astype(np.float32)
    for k in (3, 4):
        out = simulate.simulate_slice(hu, geom, 1e5, jax.random.key(1), num_splits=k)
        clean = simulate.consensus_inputs(
            simulate.simulate_sinograms(hu, geom, 1e5, jax.random.key(1))["p_clean"],
            jax.random.key(2), geom, num_splits=k)
        xs = [np.asarray(clean[f"x{j + 1}"]) for j in range(k)]
        inside = (xx ** 2 + yy ** 2) < 18 ** 2
        for x in xs:
            assert np.max(np.abs(x - np.asarray(clean["x_est"]))[inside]) < 0.01 * 1.2
        np.testing.assert_allclose(np.mean(xs, axis=0), clean["x_est"], atol=2e-5)
        noisy = np.stack([np.asarray(out[f"x{j + 1}"]) for j in range(k)])
        np.testing.assert_allclose(noisy.mean(0), out["x_est"], atol=2e-5)
        # Disjoint views: the subsets' noises are uncorrelated and each has ~K times the
        # variance of the FBP of all views.
        noise = (noisy - np.asarray(out["x_clean"]))[:, inside]
        var_all = np.var(np.asarray(out["x_est"] - out["x_clean"])[inside])
        assert np.all(np.abs(np.corrcoef(noise)[np.triu_indices(k, 1)]) < 0.1)
        assert 0.7 * k < np.var(noise, axis=1).mean() / var_all < 1.3 * k


def test_ct_presets_k3_k4_keep_the_quick_patients_and_slices():
    from data_prep.ct_consensus import ct_consensus_dataset_builder as b

    base = b.list_patients(b.PRESETS["quick"], None)
    for name, k in (("quick_k3", 3), ("quick_k4", 4)):
        preset = b.PRESETS[name]
        assert preset.num_splits == k and preset.metadata()["num_splits"] == k
        assert b.list_patients(preset, None) == base
        assert b.slice_key(preset, 3, 5).tolist() == b.slice_key(b.PRESETS["quick"], 3,
                                                                  5).tolist()
    assert "num_splits" not in b.PRESETS["quick"].metadata()


def test_num_splits_other_than_the_datasets_is_a_config_error_naming_the_preset(
        tiny_ct_data_dir):
    from consensus_jax import input_pipeline
    from consensus_jax.errors import ConfigError

    cfg = ml_collections.ConfigDict({"name": "ct_consensus", "config": "tiny",
                                     "data_dir": str(tiny_ct_data_dir), "train_split": "train",
                                     "test_split": "test", "num_splits": 3})
    with pytest.raises(ConfigError, match=r"holds K = 2 .* --config=tiny --config.num_splits=3 "
                                          r"--config.name=tiny_k3"):
        input_pipeline.load_split(cfg, "train", "ct")
    assert ConfigError.exit_code == 2
    cfg.num_splits = 2
    assert input_pipeline.check_num_splits(cfg) == 2
    quick = ml_collections.ConfigDict({"name": "ct_consensus", "config": "quick",
                                       "num_splits": 4})
    with pytest.raises(ConfigError, match=r"`python -m data_prep.ct --config=quick_k4` "):
        input_pipeline.check_num_splits_against(quick, 2)


def test_mri_k3_subsets_average_to_the_pairs_average():
    """Same slice key, so the same mask, noise and maps: the mean of the K subset images is
    the density-compensated zero-filling for every K (the weights of an outer line sum to K / p),
    so the K = 3 subsets average to the K = 2 halves' average; features x1 .. x3."""
    import dataclasses

    from consensus_jax import features
    from data_prep.mri_consensus import mri_consensus_dataset_builder as b

    pair = b.PRESETS["tiny"]
    three = dataclasses.replace(pair, name="tiny_k3", num_splits=3)
    three.validate()
    source = b.list_patients(pair, None)[0]
    _, ex2 = next(b.patient_examples(pair, source))
    _, ex3 = next(b.patient_examples(three, source))
    assert sorted(k for k in ex3 if k.startswith("x")) == sorted(features.image_keys("mri", 3))
    for key in ("x_est", "x_zf", "x_ref", "x_clean", "mask", "scale"):
        np.testing.assert_array_equal(ex3[key], ex2[key])
    np.testing.assert_allclose((ex3["x1"] + ex3["x2"] + ex3["x3"]) / 3,
                               (ex2["x1"] + ex2["x2"]) / 2, atol=1e-5)
    # Each subset differs from the average: the split is not degenerate.
    assert all(np.abs(ex3[f"x{k}"] - ex2["x1"]).max() > 1e-2 for k in (1, 2, 3))
    assert three.metadata()["num_splits"] == 3 and "num_splits" not in pair.metadata()


if __name__ == "__main__":
    write_golden(sys.argv[1], sys.argv[2])
