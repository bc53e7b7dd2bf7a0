"""Split diagnostics: statistics against numpy, the -1/7 correlation, and the bias check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.mri.coils import coil_combine
from consensus_jax.mri.diagnostics import split_bias, split_noise_statistics
from consensus_jax.mri.fft import fft2c, ifft2c
from consensus_jax.mri.masks import Undersampling, sample_mask
from consensus_jax.mri.simulate import birdcage_maps
from consensus_jax.mri.split import split_kspace
from consensus_jax.phantoms.knee import knee_phantom
from data_prep.mri_consensus.mri_consensus_dataset_builder import CALIBRATED_SNR

SIZE, COILS = 64, 4
US = Undersampling(4.0, 8)


def test_statistics_match_numpy():
    rng = np.random.default_rng(0)
    shape = (3, 10, 12)

    def cplx():
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    ref, e = cplx(), cplx()
    x1, x2 = ref + e + 0.1, ref + 0.5 * e + 0.8 * cplx()
    support = rng.random(shape) < 0.7
    n1 = np.stack([(x1 - ref).real, (x1 - ref).imag], -1)[support].ravel()
    n2 = np.stack([(x2 - ref).real, (x2 - ref).imag], -1)[support].ravel()
    for a, b, r in ((x1, x2, ref),
                    *[[np.stack([v.real, v.imag], -1) for v in (x1, x2, ref)]]):
        st = split_noise_statistics(jnp.asarray(a), jnp.asarray(b), jnp.asarray(r),
                                    jnp.asarray(support))
        np.testing.assert_allclose(float(st["correlation"]), np.corrcoef(n1, n2)[0, 1], rtol=1e-4)
        np.testing.assert_allclose(float(st["mean_n1"]), n1.mean(), atol=1e-5)
        np.testing.assert_allclose(float(st["std_n2"]), n2.std(), rtol=1e-4)


def _knee():
    image = jnp.asarray(knee_phantom(SIZE, 3), jnp.complex64)
    maps = birdcage_maps(COILS, SIZE, SIZE)
    return image, maps, fft2c(maps * image[None])


def test_halves_errors_correlate_like_minus_one_over_2r_minus_1():
    image, maps, kspace = _knee()

    @jax.jit
    def draws(key):
        def one(k):
            k_mask, k_split = jax.random.split(k)
            mask = sample_mask(k_mask, SIZE, US)
            k1, k2, _, _ = split_kspace(k_split, kspace, mask, US)
            return coil_combine(ifft2c(k1), maps), coil_combine(ifft2c(k2), maps)
        return jax.vmap(one)(jax.random.split(key, 200))

    x1, x2 = draws(jax.random.key(0))
    st = split_noise_statistics(x1, x2, jnp.broadcast_to(image, x1.shape))
    # Per outer line: w1 * w2 = 0 and E[w] = 1 give Cov = -1 and Var = 2R - 1 = 7, so the
    # pooled correlation over many masks tends to -1/7; the centre lines add no error.
    assert -0.19 < float(st["correlation"]) < -0.1
    assert abs(float(st["mean_n1"])) < 0.05 * float(st["std_n1"])


@pytest.mark.parametrize("snr", [None, CALIBRATED_SNR["quick"]])
def test_split_bias_shrinks_and_zero_filling_does_not(snr):
    # Noiseless, and at the calibrated noise level of the quick preset: the halves are
    # unbiased estimates of the fully sampled (noisy) image whatever the noise.
    _, maps, kspace = _knee()
    if snr is not None:
        image = coil_combine(ifft2c(kspace), maps)
        sigma = float(jnp.max(jnp.abs(image))) / snr
        kspace = kspace + sigma * jax.random.normal(jax.random.key(7), kspace.shape,
                                                    jnp.complex64)
    few = split_bias(kspace, maps, jax.random.key(1), US, 4)
    many = split_bias(kspace, maps, jax.random.key(2), US, 1000)
    assert float(many["rel_error_half"]) < 0.06
    assert float(many["rel_error_half"]) < 0.5 * float(few["rel_error_half"])
    assert float(many["rel_error_zero_filled"]) > 0.2
    assert abs(float(many["rel_error_zero_filled"]) - float(few["rel_error_zero_filled"])) < 0.1


def test_split_bias_equals_explicit_averaging():
    # The weights shortcut must give the mean of the explicitly reconstructed half images.
    _, maps, kspace = _knee()
    key, m = jax.random.key(3), 6
    out = split_bias(kspace, maps, key, US, m)
    images = []
    for k in jax.random.split(key, m):
        k_mask, k_split = jax.random.split(k)
        mask = sample_mask(k_mask, SIZE, US)
        k1, _, _, _ = split_kspace(k_split, kspace, mask, US)
        images.append(np.asarray(coil_combine(ifft2c(k1), maps)))
    ref = np.asarray(coil_combine(ifft2c(kspace), maps))
    explicit = np.linalg.norm(np.mean(images, 0) - ref) / np.linalg.norm(ref)
    np.testing.assert_allclose(float(out["rel_error_half"]), explicit, rtol=1e-4)
