"""The networks' spread as an uncertainty map: the maths against NumPy and SciPy, the schemes
that declare one, and the rank correlation evaluation reports, on a tiny trained pair."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import train_tiny

from configs import tiny
from consensus_jax import evaluation, experiment, methods, synthetic, uncertainty
from consensus_jax.models import UNetConfig

RNG = np.random.default_rng(0)


def test_spread_is_half_the_pair_difference_and_the_std_over_k():
    f1, f2, f3 = (RNG.normal(size=(2, 8, 9, 2)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(uncertainty.network_spread([f1, f2]), np.abs(f1 - f2) / 2,
                               rtol=1e-5, atol=1e-6)
    mean = (f1 + f2 + f3) / 3
    by_hand = np.sqrt(((f1 - mean) ** 2 + (f2 - mean) ** 2 + (f3 - mean) ** 2) / 3)
    np.testing.assert_allclose(uncertainty.network_spread([f1, f2, f3]), by_hand, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        uncertainty.network_spread([f1])


def test_patch_values_match_a_loop_over_whole_patches():
    # 40 x 37 px: two by two whole 16 px patches; the 8 and 5 px margins are left out.
    z, ref, spread = (RNG.normal(size=(3, 40, 37, 2)).astype(np.float32) for _ in range(3))
    got_spread = np.asarray(jax.jit(uncertainty.patch_mean_spread)(spread))
    got_error = np.asarray(jax.jit(uncertainty.patch_rms_error)(z, ref))
    assert got_spread.shape == got_error.shape == (3, 2, 2)
    for s in range(3):
        for i in range(2):
            for j in range(2):
                box = np.s_[s, 16 * i:16 * (i + 1), 16 * j:16 * (j + 1)]
                modulus = np.hypot(spread[box][..., 0], spread[box][..., 1])
                assert got_spread[s, i, j] == pytest.approx(modulus.mean(), rel=1e-5)
                err = (z[box] - ref[box]).astype(np.float64)
                assert got_error[s, i, j] == pytest.approx(
                    np.sqrt(np.mean(err[..., 0] ** 2 + err[..., 1] ** 2)), rel=1e-5)
    with pytest.raises(ValueError, match="no 16 x 16 patch"):
        uncertainty.patch_mean_spread(spread[:, :8])


def test_spearman_by_hand_and_against_scipy():
    # By hand: ranks of a = (1, 2, 3, 4, 5), of b = (2, 1, 4, 3, 5); sum d^2 = 4, so
    # rho = 1 - 6 * 4 / (5 * 24) = 0.8.
    assert uncertainty.spearman([10, 20, 30, 40, 50], [2.0, 1.0, 4.0, 3.0, 9.0]) == \
        pytest.approx(0.8)
    assert uncertainty.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(uncertainty.spearman([1, 1, 1], [1, 2, 3]))
    stats = pytest.importorskip("scipy.stats")
    for trial in range(5):
        a = RNG.normal(size=60)
        b = a + RNG.normal(scale=1.0 + trial, size=60)
        if trial % 2:  # ties in both samples
            a, b = np.round(a), np.round(b * 2) / 2
        assert uncertainty.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)


def test_spread_error_correlation_per_slice_and_pooled():
    error = RNG.uniform(size=(4, 3, 3))
    spread = error ** 3  # monotone: the same ranking
    spread[3] = 1.0  # a constant spread ranks nothing
    got = uncertainty.spread_error_correlation(spread, error)
    assert got["per_slice"][:3] == pytest.approx([1.0, 1.0, 1.0]) and np.isnan(got["per_slice"][3])
    assert got["mean"] == pytest.approx(1.0) and got["std"] == pytest.approx(0.0)
    assert got["num_slices"] == 3 and got["num_patches"] == 36
    assert got["pooled"] == pytest.approx(uncertainty.spearman(spread, error))
    assert "object_pooled" not in got
    inside = np.zeros(error.shape, bool)
    inside[:, :2] = True
    spread[:, :2] = -error[:, :2]  # inside the object the ranking is reversed
    got = uncertainty.spread_error_correlation(spread, error, inside)
    assert got["object_pooled"] == pytest.approx(-1.0) and got["object_patches"] == 24


def test_object_patches_by_modality():
    ct = np.full((1, 32, 48, 1), -1.0, np.float32)  # air, in HU / 1000
    ct[0, :16, 16:32] = 0.05  # soft tissue
    ct[0, 16:, :16] = -0.6  # lung-like: below the -500 HU threshold
    np.testing.assert_array_equal(evaluation.object_patches("ct", ct),
                                  [[[False, True, False], [False, False, False]]])
    mri = np.zeros((2, 32, 32, 2), np.float32)
    mri[:, :16, :16, 1] = 1.0
    mri[:, 16:, 16:, 0] = 0.05  # 5% of the slice's largest patch mean: background
    mri[1] *= 10  # relative to each slice
    np.testing.assert_array_equal(evaluation.object_patches("mri", mri),
                                  [[[True, False], [False, False]]] * 2)


def test_only_schemes_of_several_networks_declare_a_spread():
    model = UNetConfig(base_features=4, depth=2)
    for kind in methods.KINDS:
        method = methods.make(kind, model=model, num_splits=3, teacher="unused")
        assert (method.spread is not None) == (method.num_networks > 1), kind
    pair = methods.make("consensus", model=model)
    params = pair.init_params(jax.random.PRNGKey(1))
    x1, x2 = (jnp.asarray(RNG.normal(size=(2, 20, 28, 1)), jnp.float32) for _ in range(2))
    y1 = pair.apply_whole(params["net1"], x1)
    y2 = pair.apply_whole(params["net2"], x2)
    z, spread = pair.denoise_and_spread(params, x1, x2)
    np.testing.assert_allclose(spread, np.abs(np.asarray(y1) - np.asarray(y2)) / 2, atol=1e-6)
    np.testing.assert_allclose(z, (np.asarray(y1) + np.asarray(y2)) / 2, atol=1e-6)
    np.testing.assert_allclose(pair.spread(params, x1, x2), spread, atol=1e-6)


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("pair") / "consensus", synthetic_size_px=64)


def test_spread_ranks_the_error_where_one_half_is_much_noisier(pair_run):
    method, params, _, _ = evaluation.load_run(pair_run)
    clean = synthetic.smooth_images(6, 64, seed=5)
    sigma = np.where(np.arange(64) < 32, 0.02, 1.0)[None, None, :, None]  # right half noisy
    rng = np.random.default_rng(6)
    images = {k: (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)
              for k in ("x1", "x2")}
    images["x_full"] = clean
    outputs = evaluation.predict(method, params, images)
    spreads = {"Proposed": evaluation.predict_spread(method, params, images)}
    (record,) = evaluation.spread_error_correlations("ct", spreads, outputs, images)
    assert record["method"] == "Proposed" and record["reference"] == "full-dose FBP"
    assert record["num_patches"] == 6 * 16 and record["num_slices"] == 6
    assert record["pooled"] > 0.6 and record["mean"] > 0.5
    # The same spread against an error that does not follow the noise (shuffled patches
    # within each slice) ranks nothing: the number is a correlation, not a constant.
    patch_error = np.asarray(uncertainty.patch_rms_error(outputs["Proposed"], clean))
    shuffled = np.stack([rng.permutation(e.ravel()).reshape(e.shape) for e in patch_error])
    control = uncertainty.spread_error_correlation(
        np.asarray(uncertainty.patch_mean_spread(spreads["Proposed"])), shuffled)
    assert abs(control["pooled"]) < record["pooled"] - 0.3


@pytest.mark.slow
def test_evaluate_reports_the_rank_correlation_for_the_pair_only(pair_run, tmp_path):
    config = tiny.get_config()
    config.train.tensorboard = config.train.progress = False
    config.train.num_steps = 2
    config.loss.kind = "noise2noise"
    config.loss.beta_r = 0.0
    config.data.synthetic_size_px = 64
    single = tmp_path / "noise2noise"
    experiment.fit(config, single)
    paths = evaluation.evaluate([pair_run, single], tmp_path / "out")
    table = paths["md"].read_text()
    assert "Spearman's rank correlation" in table
    rows = [line for line in table.splitlines() if line.startswith("| Proposed |")]
    assert all(line.count("|") == 8 for line in rows)
    assert len(rows) == 3  # one per reference of the synthetic set (x_full, x_clean, x_true)
    assert not any(line.startswith("| Noise2noise") for line in table.splitlines())
    payload = json.loads(paths["json"].read_text())
    records = payload["uncertainty"]
    assert {r["method"] for r in records} == {"Proposed"}
    for r in records:
        assert -1 <= r["pooled"] <= 1 and -1 <= r["mean"] <= 1 and len(r["per_slice"]) == 6
        finite = [v for v in r["per_slice"] if np.isfinite(v)]
        assert r["mean"] == pytest.approx(np.mean(finite))
        assert f"{r['mean']:.2f} ± {r['std']:.2f} | {r['pooled']:.2f}" in table
    csv_lines = paths["csv"].read_text().splitlines()
    assert sum(",spread_error_spearman," in line for line in csv_lines) == 3
    assert sum(",spread_error_spearman_pooled," in line for line in csv_lines) == 3
    assert sum(",spread_error_spearman_object," in line for line in csv_lines) == 3
