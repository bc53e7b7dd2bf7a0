"""Dose simulation (Poisson statistics, binomial thinning), view splits and the split diagnostic,
and the end-to-end slice simulation, against analytic and Monte-Carlo references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.ct.dose import (
    MU_WATER_PER_MM,
    full_dose_counts,
    hu_to_mu,
    mu_to_hu,
    post_log,
    simulate_dose_pair,
    thin_counts,
)
from consensus_jax.ct.geometry import Ellipse, ImageGrid, ParallelBeamGeometry, ellipse_image
from consensus_jax.ct.simulate import (
    consensus_inputs,
    default_noise_mask,
    low_dose_noise_hu,
    simulate_sinograms,
    simulate_slice,
)
from consensus_jax.ct.split import (
    available_splits,
    get_split,
    k_fold_interleaved,
    odd_even,
    random_pairwise,
    split_noise_diagnostic,
)

I0 = 1.0e4
SAMPLES = 40_000


def test_post_log_mean_and_variance_match_poisson_approximation():
    p = np.array([0.5, 2.0, 4.0], np.float32)
    line_integrals = jnp.broadcast_to(jnp.asarray(p), (SAMPLES, p.size))
    p_hat = np.asarray(post_log(full_dose_counts(line_integrals, jax.random.key(0), I0), I0))
    expected_counts = I0 * np.exp(-p.astype(np.float64))
    # Delta method: var(-log N) ~ 1 / E[N]; the bias of the log is + 1 / (2 E[N]).
    var = p_hat.var(axis=0)
    np.testing.assert_allclose(var, 1.0 / expected_counts, rtol=0.04)
    std_err = np.sqrt(var / SAMPLES)
    bias = p_hat.mean(axis=0) - p - 0.5 / expected_counts
    assert np.all(np.abs(bias) < 4 * std_err), (bias, std_err)


def test_binomial_thinning_moments_and_full_low_correlation():
    fraction = 0.25
    mean = 400.0
    counts = full_dose_counts(jnp.full((SAMPLES,), -np.log(mean / I0), jnp.float32),
                              jax.random.key(1), I0)
    low = thin_counts(counts, jax.random.key(2), fraction)
    counts, low = np.asarray(counts, np.float64), np.asarray(low, np.float64)
    # Thinned Poisson is Poisson(f * mean): mean = var = f * mean.
    assert abs(low.mean() - fraction * mean) < 4 * np.sqrt(fraction * mean / SAMPLES)
    assert abs(low.var() / (fraction * mean) - 1) < 0.04
    assert np.all(low <= counts)
    # cov(N, B) = f var(N) = f mean, so corr = f mean / sqrt(mean * f mean) = sqrt(f).
    corr = np.corrcoef(counts, low)[0, 1]
    assert abs(corr - np.sqrt(fraction)) < 0.015, corr


def test_dose_pair_low_dose_is_unbiased_and_noisier():
    p = jnp.full((SAMPLES,), 1.5, jnp.float32)
    p_full, p_low = simulate_dose_pair(p, jax.random.key(3), I0, dose_fraction=0.25)
    p_full, p_low = np.asarray(p_full), np.asarray(p_low)
    assert abs(p_low.mean() - 1.5) < 0.01 and abs(p_full.mean() - 1.5) < 0.005
    np.testing.assert_allclose(p_low.var() / p_full.var(), 4.0, rtol=0.06)


def test_non_positive_counts_are_clipped_before_the_log():
    counts = jnp.array([-3.0, 0.0, 0.2, 5.0])
    np.testing.assert_allclose(np.asarray(post_log(counts, 100.0)),
                               -np.log(np.array([0.5, 0.5, 0.5, 5.0]) / 100.0), rtol=1e-6)
    p_full, p_low = simulate_dose_pair(jnp.full((1000,), 12.0), jax.random.key(4), 1e3,
                                       electronic_noise_counts=2.0)
    assert np.all(np.isfinite(np.asarray(p_full))) and np.all(np.isfinite(np.asarray(p_low)))
    with pytest.raises(ValueError, match="dose_fraction"):
        simulate_dose_pair(jnp.zeros(3), jax.random.key(0), 1e3, dose_fraction=1.5)


def test_hu_mu_conversion():
    hu = jnp.array([-1100.0, -1000.0, 0.0, 1000.0])
    mu = np.asarray(hu_to_mu(hu))
    np.testing.assert_allclose(mu, [0.0, 0.0, MU_WATER_PER_MM, 2 * MU_WATER_PER_MM], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mu_to_hu(mu[1:])), [-1000.0, 0.0, 1000.0], atol=1e-3)


def _is_partition(half1, half2, num_views):
    both = np.concatenate([half1, half2])
    return np.array_equal(np.sort(both), np.arange(num_views))


def test_splits_partition_the_views():
    half1, half2 = odd_even(9)
    np.testing.assert_array_equal(half1, [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(half2, [1, 3, 5, 7])
    key = jax.random.key(5)
    half1, half2 = random_pairwise(100, key)
    assert _is_partition(half1, half2, 100) and half1.size == half2.size == 50
    # Exactly one view of each consecutive pair in each half, and not always the same one.
    np.testing.assert_array_equal(half1 // 2, np.arange(50))
    assert 0 < np.sum(half1 % 2) < 50
    again = random_pairwise(100, key)
    np.testing.assert_array_equal(again[0], half1)
    np.testing.assert_array_equal(k_fold_interleaved(10, num_folds=2)[0], odd_even(10)[0])
    half1, half2 = k_fold_interleaved(12, num_folds=4)
    np.testing.assert_array_equal(half1, [0, 1, 4, 5, 8, 9])
    half1, half2 = get_split("k_fold_interleaved", num_folds=6)(60, jax.random.key(6))
    assert _is_partition(half1, half2, 60) and np.unique(half1 % 6).size == 3
    assert {"odd_even", "random_pairwise", "k_fold_interleaved"} <= set(available_splits())
    with pytest.raises(ValueError, match="not registered"):
        get_split("checkerboard")


def test_split_diagnostic_against_numpy():
    rng = np.random.default_rng(7)
    clean = rng.random((2, 32, 32)).astype(np.float32)
    a, b = rng.standard_normal((2, 2, 32, 32)).astype(np.float32)
    n1 = 0.1 * a + 0.02
    n2 = 0.2 * (0.3 * a + np.sqrt(1 - 0.09) * b)
    diag = split_noise_diagnostic(clean + n1, clean + n2, clean)
    assert diag.mean_n1 == pytest.approx(float(n1.mean()), abs=1e-5)
    assert diag.std_n2 == pytest.approx(float(n2.std()), rel=1e-4)
    assert diag.correlation == pytest.approx(np.corrcoef(n1.ravel(), n2.ravel())[0, 1], abs=1e-4)


@pytest.fixture(scope="module")
def water_slice():
    geometry = ParallelBeamGeometry(ImageGrid(64, 3.0), num_views=180, num_detectors=92,
                                    detector_spacing_mm=3.0)
    body = (Ellipse((0.0, 0.0), (85.0, 65.0), 0.0, 1000.0),
            Ellipse((25.0, 10.0), (15.0, 10.0), 0.3, 60.0),
            Ellipse((-30.0, -10.0), (10.0, 10.0), 0.0, -100.0))
    hu = ellipse_image(body, geometry.image, supersampling=2) - 1000.0
    return geometry, hu.astype(np.float32)


def test_simulate_slice_images_and_noise_structure(water_slice):
    geometry, hu = water_slice
    out = simulate_slice(hu, geometry, 5e3, jax.random.key(8))
    assert set(out) == {"x1", "x2", "x_est", "x_full", "x_clean", "x_true"}
    for image in out.values():
        assert image.shape == hu.shape and image.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out["x_true"]), hu / 1000.0)
    fov = default_noise_mask(geometry)
    # The clean FBP is the source image up to the Hann blur: equal means in the field of view.
    assert abs(float(out["x_clean"][fov].mean() - out["x_true"][fov].mean())) < 0.005
    odd_even_noise = split_noise_diagnostic(out["x1"], out["x2"], out["x_clean"], fov)
    assert abs(odd_even_noise.correlation) < 0.05
    assert abs(odd_even_noise.mean_n1) < 0.1 * odd_even_noise.std_n1
    assert odd_even_noise.std_n1 == pytest.approx(odd_even_noise.std_n2, rel=0.1)
    # Binomial thinning: full- and quarter-dose noise correlate with sqrt(1 / 4) x (std ratio).
    dose_noise = split_noise_diagnostic(out["x_full"], out["x_est"], out["x_clean"], fov)
    assert dose_noise.std_n2 == pytest.approx(2.0 * dose_noise.std_n1, rel=0.1)
    assert dose_noise.correlation == pytest.approx(0.5, abs=0.08)
    # Halves have twice the variance of x_est (half the views).
    assert odd_even_noise.std_n1 == pytest.approx(np.sqrt(2) * dose_noise.std_n2, rel=0.1)


def test_consensus_inputs_from_a_scan(water_slice):
    geometry, hu = water_slice
    key_noise, key_split = jax.random.split(jax.random.key(8))
    scans = simulate_sinograms(hu, geometry, 5e3, key_noise)
    out = consensus_inputs(scans["p_low"], key_split, geometry)
    assert set(out) == {"x1", "x2", "x_est"}
    # FBP is linear and each odd/even half is normalised by its own (equal) number of views, so
    # the FBP of all views is the mean of the halves' FBPs.
    np.testing.assert_allclose(np.asarray(out["x_est"]),
                               0.5 * (np.asarray(out["x1"]) + np.asarray(out["x2"])), atol=2e-4)
    # simulate_slice is the simulated scan followed by consensus_inputs with the same keys.
    full = simulate_slice(hu, geometry, 5e3, jax.random.key(8))
    refs = consensus_inputs(scans["p_low"], key_split, geometry, p_full=scans["p_full"],
                            p_clean=scans["p_clean"])
    for name in ("x1", "x2", "x_est", "x_full", "x_clean"):
        np.testing.assert_array_equal(np.asarray(refs[name]), np.asarray(full[name]))
    with pytest.raises(ValueError, match="views, detectors"):
        consensus_inputs(scans["p_low"][:, :-1], key_split, geometry)
    with pytest.raises(ValueError, match="p_full"):
        consensus_inputs(scans["p_low"], key_split, geometry, p_full=scans["p_full"][None])


def test_simulation_is_deterministic_and_noise_scales_with_dose(water_slice):
    geometry, hu = water_slice
    first = simulate_sinograms(hu, geometry, 5e3, jax.random.key(9))
    again = simulate_sinograms(hu, geometry, 5e3, jax.random.key(9))
    other = simulate_sinograms(hu, geometry, 5e3, jax.random.key(10))
    np.testing.assert_array_equal(np.asarray(first["p_low"]), np.asarray(again["p_low"]))
    assert not np.array_equal(np.asarray(first["p_low"]), np.asarray(other["p_low"]))
    # Quantum noise std scales as 1 / sqrt(I0).
    low = low_dose_noise_hu(hu, geometry, 2.5e3, jax.random.key(11))
    high = low_dose_noise_hu(hu, geometry, 1.0e4, jax.random.key(11))
    assert low / high == pytest.approx(2.0, rel=0.1)
    with pytest.raises(ValueError, match="size_px"):
        simulate_sinograms(hu[:32, :32], geometry, 5e3, jax.random.key(0))
