"""Centred orthonormal FFTs against numpy's FFT (independent reference) and unitarity."""

import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.mri.fft import fft2c, fftc, ifft2c, ifftc


def _numpy_fft2c(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


@pytest.mark.parametrize("shape", [(3, 16, 12), (2, 15, 9)])
def test_fft2c_matches_numpy_and_is_unitary(shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    k = np.asarray(fft2c(jnp.asarray(x)))
    np.testing.assert_allclose(k, _numpy_fft2c(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(k), np.linalg.norm(x), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ifft2c(jnp.asarray(k))), x, atol=1e-5)


def test_dc_at_centre_index():
    # A constant image has all its energy at ky = kx = 0, which must sit at index n // 2.
    h, w = 10, 7
    k = np.asarray(fft2c(jnp.ones((1, h, w), jnp.complex64)))[0]
    assert np.unravel_index(np.argmax(np.abs(k)), k.shape) == (h // 2, w // 2)
    np.testing.assert_allclose(np.abs(k[h // 2, w // 2]), np.sqrt(h * w), rtol=1e-5)


def test_one_axis_transform_matches_numpy():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 12, 6)) + 1j * rng.standard_normal((4, 12, 6)))
    x = x.astype(np.complex64)
    ref = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=1), axis=1, norm="ortho"), axes=1)
    k = np.asarray(fftc(jnp.asarray(x), axes=(-2,)))
    np.testing.assert_allclose(k, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ifftc(jnp.asarray(k), axes=(-2,))), x, atol=1e-5)
