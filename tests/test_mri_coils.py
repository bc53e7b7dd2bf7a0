"""ACS sensitivity maps and sensitivity-weighted coil combination."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.mri.coils import acs_window, coil_combine, estimate_sensitivity_maps
from consensus_jax.mri.fft import fft2c
from consensus_jax.mri.simulate import birdcage_maps
from consensus_jax.phantoms.knee import knee_phantom

SIZE, COILS, CENTER = 64, 8, 16


def test_coil_combine_matches_the_weighted_formula():
    rng = np.random.default_rng(0)
    shape = (2, 3, 5, 6)
    maps = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    maps[:, :, 0, 0] = 0.0  # a pixel outside the support
    y = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    x = np.asarray(coil_combine(jnp.asarray(y, jnp.complex64), jnp.asarray(maps, jnp.complex64)))
    ref = np.zeros(x.shape, complex)
    for b in range(2):
        for i in range(5):
            for j in range(6):
                s = maps[b, :, i, j]
                if np.vdot(s, s).real > 0:
                    ref[b, i, j] = np.vdot(s, y[b, :, i, j]) / np.vdot(s, s).real
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-6)
    # With exact maps the combination inverts the coil weighting.
    image = rng.standard_normal((5, 6)) + 1j * rng.standard_normal((5, 6))
    back = coil_combine(jnp.asarray(maps[0] * image, jnp.complex64),
                        jnp.asarray(maps[0], jnp.complex64))
    np.testing.assert_allclose(np.asarray(back)[1:, :], image[1:, :], rtol=1e-4, atol=1e-5)


def test_acs_window_is_zero_outside_the_centre_block():
    w = acs_window(32, 64, 16)
    rows, cols = np.nonzero(w)
    assert (cols.min(), cols.max()) == (24, 39)
    assert (rows.min(), rows.max()) == (12, 19)  # same resolution along kx: 16 * 32 / 64 rows
    assert w.max() <= 1.0 and w.min() >= 0.0


@pytest.fixture(scope="module")
def simulated():
    image = jnp.asarray(knee_phantom(SIZE, 1) * np.exp(1j * np.linspace(-1, 1, SIZE))[None, :])
    maps = birdcage_maps(COILS, SIZE, SIZE)
    kspace = fft2c(maps * image[None])
    est, support = estimate_sensitivity_maps(kspace, CENTER)
    return np.asarray(image), np.asarray(maps), np.asarray(est), np.asarray(support)


def test_estimated_maps_equal_true_maps_up_to_a_phase(simulated):
    image, true_maps, est, support = simulated
    obj = np.abs(image) > 0.05
    inner = obj & (np.abs(np.arange(SIZE) - SIZE / 2) < SIZE / 4)[None, :]
    # sum |S|^2 = 1 on the support, 0 outside.
    rss = np.sqrt((np.abs(est) ** 2).sum(axis=0))
    np.testing.assert_allclose(rss[support], 1.0, atol=1e-5)
    assert np.all(est[:, ~support] == 0)
    # The support covers the object and leaves out background far from it.
    assert support[obj].mean() > 0.99
    assert support[:, :4].mean() < 0.2 and support[:, -4:].mean() < 0.2
    # Up to a per-pixel phase, estimated maps are the true (RSS-normalised) maps:
    # |<S_est, S_true>| = 1 for equal maps.
    overlap = np.abs((np.conj(est) * true_maps).sum(axis=0))
    assert overlap[inner].mean() > 0.98
    assert np.percentile(overlap[obj], 10) > 0.9


def test_estimated_maps_work_batched(simulated):
    image, true_maps, _, _ = simulated
    k = fft2c(jnp.asarray(true_maps) * jnp.asarray(image)[None])
    kb = jnp.stack([k, 2.0 * k])
    est_b, sup_b = estimate_sensitivity_maps(kb, CENTER)
    est_1, sup_1 = estimate_sensitivity_maps(k, CENTER)
    # The maps do not depend on the image scale; batching must not mix slices.
    np.testing.assert_allclose(np.asarray(est_b[1]), np.asarray(est_1), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sup_b[0]), np.asarray(sup_1))
    with pytest.raises(ValueError, match="threshold"):
        estimate_sensitivity_maps(k, CENTER, threshold=1.5)


def test_noise_does_not_spread_the_support_into_the_background():
    image = knee_phantom(SIZE, 2)
    maps = birdcage_maps(COILS, SIZE, SIZE)
    k = fft2c(maps * jnp.asarray(image, jnp.complex64)[None])
    noise = 0.01 * jax.random.normal(jax.random.key(0), k.shape, jnp.complex64)
    _, clean_support = estimate_sensitivity_maps(k, CENTER)
    _, support = estimate_sensitivity_maps(k + noise, CENTER)
    obj = image > 0.05
    assert np.asarray(support)[obj].mean() > 0.99
    grown = int(np.asarray(support).sum()) - int(np.asarray(clean_support).sum())
    assert abs(grown) < 0.02 * obj.sum()
