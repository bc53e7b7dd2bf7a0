"""Simulated acquisition: coil maps, smooth phase, noise level, k-space of an image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.mri.coils import coil_combine
from consensus_jax.mri.fft import fft2c, ifft2c
from consensus_jax.mri.simulate import (
    CoilSimulation,
    birdcage_maps,
    simulate_kspace,
    smooth_phase,
)
from consensus_jax.phantoms.knee import knee_phantom


def test_birdcage_maps_are_normalised_smooth_and_distinct():
    maps = np.asarray(birdcage_maps(8, 64, 48))
    assert maps.shape == (8, 64, 48) and maps.dtype == np.complex64
    np.testing.assert_allclose(np.sqrt((np.abs(maps) ** 2).sum(0)), 1.0, rtol=1e-5)
    k = np.fft.fftshift(np.fft.fft2(maps), axes=(-2, -1))
    centre = np.abs(k[:, 32 - 6:32 + 6, 24 - 6:24 + 6]) ** 2
    # Most energy within +-6 k-space samples (the FFT of non-periodic maps leaks a little).
    assert np.all(centre.sum(axis=(1, 2)) / (np.abs(k) ** 2).sum(axis=(1, 2)) > 0.9)
    flat = maps.reshape(8, -1)
    gram = np.abs(flat.conj() @ flat.T) / np.outer(*[np.linalg.norm(flat, axis=1)] * 2)
    assert gram[~np.eye(8, dtype=bool)].max() < 0.95


def test_simulated_kspace_has_the_requested_noise_and_image():
    image = jnp.asarray(knee_phantom(64, 4))
    noisy, clean, maps = simulate_kspace(image, jax.random.key(0), CoilSimulation(8, snr=50.0))
    sigma = float(jnp.abs(image).max()) / 50.0
    noise = np.asarray(noisy - clean)
    np.testing.assert_allclose(np.sqrt(np.mean(np.abs(noise) ** 2)), sigma, rtol=0.03)
    np.testing.assert_allclose(noise.real.std(), noise.imag.std(), rtol=0.05)
    # Clean k-space is the FFT of the coil images of the phase-modulated image.
    x = np.asarray(coil_combine(ifft2c(clean), maps))
    np.testing.assert_allclose(np.abs(x), np.asarray(image), atol=1e-5)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(np.asarray(maps) * x, axes=(-2, -1)),
                                      norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(np.asarray(clean), ref, atol=1e-4)
    noiseless, same, _ = simulate_kspace(image, jax.random.key(0), CoilSimulation(8, snr=None))
    np.testing.assert_array_equal(np.asarray(noiseless), np.asarray(same))


def test_smooth_phase_is_smooth_and_keyed():
    a = np.asarray(smooth_phase(jax.random.key(0), 64, 64, 1.0))
    b = np.asarray(smooth_phase(jax.random.key(1), 64, 64, 1.0))
    assert np.abs(a - b).max() > 0.1
    assert np.abs(np.diff(a, axis=0)).max() < 0.2 and np.abs(np.diff(a, axis=1)).max() < 0.2
    k = np.abs(fft2c(jnp.exp(1j * jnp.asarray(a))[None]))[0] ** 2
    assert k[32 - 8:32 + 8, 32 - 8:32 + 8].sum() / k.sum() > 0.95


@pytest.mark.parametrize("kwargs", [{"num_coils": 0}, {"snr": 0.0}, {"coil_radius": 0.9}])
def test_bad_coil_simulation_is_rejected(kwargs):
    with pytest.raises(ValueError):
        CoilSimulation(**kwargs)
