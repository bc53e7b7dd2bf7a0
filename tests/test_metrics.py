"""metrics.ssim is skimage's structural_similarity (Gaussian, sigma 1.5, population covariance)."""

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from consensus_jax import metrics


def _pair(seed, shape=(40, 52)):
    rng = np.random.default_rng(seed)
    ref = np.cumsum(np.cumsum(rng.standard_normal(shape), 0), 1)
    ref = 400 * (ref - ref.min()) / np.ptp(ref) - 160
    x = ref + 25 * rng.standard_normal(shape)
    return x.astype(np.float64), ref.astype(np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_equals_skimage(seed):
    x, ref = _pair(seed)
    expected = structural_similarity(x, ref, data_range=400.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    got = float(metrics.ssim(jnp.asarray(x), jnp.asarray(ref), 400.0))
    assert got == pytest.approx(expected, abs=2e-5)


def test_ssim_batched_per_image_data_range():
    pairs = [_pair(s) for s in range(3)]
    x = np.stack([p[0] for p in pairs])
    ref = np.stack([p[1] for p in pairs])
    dr = np.array([400.0, 300.0, 800.0])
    got = np.asarray(metrics.ssim(jnp.asarray(x), jnp.asarray(ref), jnp.asarray(dr)))
    for i in range(3):
        exp = structural_similarity(x[i], ref[i], data_range=dr[i], gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
        assert got[i] == pytest.approx(exp, abs=2e-5)


def test_ct_metrics_window_and_rmse():
    x, ref = _pair(5)
    x[:5] = 3000.0  # outside the window: clipped for SSIM, counted in RMSE
    m = metrics.ct_metrics(jnp.asarray(x[None]), jnp.asarray(ref[None]))
    assert float(m["rmse_hu"][0]) == pytest.approx(np.sqrt(np.mean((x - ref) ** 2)), rel=1e-5)
    exp = structural_similarity(np.clip(x, -160, 240), np.clip(ref, -160, 240), data_range=400.0,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert float(m["ssim"][0]) == pytest.approx(100 * exp, abs=2e-3)


def test_mri_metrics_complex_rmse_and_amplitude_ssim():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 32, 32)) + 1j * rng.standard_normal((2, 32, 32))
    x = ref + 0.1 * (rng.standard_normal(ref.shape) + 1j * rng.standard_normal(ref.shape))
    as2 = lambda z: np.stack([z.real, z.imag], -1)
    m = metrics.mri_metrics(jnp.asarray(as2(x)), jnp.asarray(as2(ref)))
    for i in range(2):
        assert float(m["rmse_1e3"][i]) == pytest.approx(
            1e3 * np.sqrt(np.mean(np.abs(x[i] - ref[i]) ** 2)), rel=1e-5)
        exp = structural_similarity(np.abs(x[i]), np.abs(ref[i]), data_range=np.abs(ref[i]).max(),
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert float(m["ssim"][i]) == pytest.approx(100 * exp, abs=2e-3)


def test_bad_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        metrics.ssim(jnp.zeros((1, 20, 20)), jnp.zeros((1, 20, 21)), 1.0)
    with pytest.raises(ValueError, match="too small"):
        metrics.ssim(jnp.zeros((1, 8, 8)), jnp.zeros((1, 8, 8)), 1.0)
