"""Consensus split: disjoint halves, amplification, and Monte-Carlo unbiasedness (paper, 3.1)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.mri.coils import coil_combine
from consensus_jax.mri.fft import ifft2c
from consensus_jax.mri.masks import Undersampling, center_lines, sample_mask, sample_masks
from consensus_jax.mri.simulate import birdcage_maps
from consensus_jax.mri.split import (
    half_amplification,
    half_weights,
    partition_mask,
    split_kspace,
    split_kspace_k,
    split_mask,
    subset_amplification,
)
from consensus_jax.phantoms.knee import knee_phantom

SIZE, COILS, CENTER = 64, 4, 8
US = Undersampling(4.0, CENTER)
BATCH = 200


def test_halves_are_disjoint_outside_centre_and_cover_the_mask():
    masks = sample_masks(jax.random.key(0), 300, SIZE, US)
    m1, m2 = (np.asarray(m) for m in split_mask(jax.random.key(1), masks, CENTER))
    masks = np.asarray(masks)
    centre = center_lines(SIZE, CENTER)
    np.testing.assert_array_equal(m1 | m2, masks)
    np.testing.assert_array_equal(m1 & m2, np.broadcast_to(centre, masks.shape))
    # Each sampled outer line goes to half 1 with probability 1/2.
    outer = masks & ~centre
    n, k = outer.sum(), (m1 & ~centre).sum()
    assert abs(k - n / 2) < 5 * np.sqrt(n / 4)


def test_amplification_is_2r_and_weights_have_unit_mean():
    assert half_amplification(US, SIZE) == pytest.approx(8.0)  # the paper's factor at 4x
    fm = Undersampling(4.0, CENTER, "fastmri")
    p = (SIZE / 4 - CENTER) / (SIZE - CENTER)
    assert half_amplification(fm, SIZE) == pytest.approx(2.0 / p)
    m = 20000
    masks = sample_masks(jax.random.key(2), m, SIZE, US)
    m1, _ = split_mask(jax.random.key(3), masks, CENTER)
    w = np.asarray(half_weights(m1, CENTER, 8.0))
    assert set(np.unique(w)) <= {0.0, 1.0, 8.0}
    # E[w] = 1 for every column (Var = 7 on outer columns); plain zero-filling has E = 1/4.
    assert np.all(np.abs(w.mean(axis=0) - 1.0) < 5 * np.sqrt(7.0 / m))
    zf = np.asarray(masks, float).mean(axis=0)
    outer = ~center_lines(SIZE, CENTER)
    assert np.all(np.abs(zf[outer] - 0.25) < 5 * np.sqrt(0.25 * 0.75 / m))


def test_split_kspace_applies_the_weights():
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((2, 3, 8, SIZE)) + 1j * rng.standard_normal((2, 3, 8, SIZE)))
    k = jnp.asarray(k.astype(np.complex64))
    mask = sample_masks(jax.random.key(4), 2, SIZE, US)
    k1, k2, m1, m2 = split_kspace(jax.random.key(5), k, mask, US)
    centre = center_lines(SIZE, CENTER)
    for kh, mh in ((k1, m1), (k2, m2)):
        mh = np.asarray(mh)
        w = np.where(centre, 1.0, np.where(mh, 8.0, 0.0))
        np.testing.assert_allclose(np.asarray(kh), np.asarray(k) * w[:, None, None, :], rtol=1e-6)


@pytest.fixture(scope="module")
def knee_kspace():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[-1:1:SIZE * 1j, -1:1:SIZE * 1j]
    phase = 0.8 * xx - 0.5 * yy + 0.3 * xx * yy + rng.uniform(-np.pi, np.pi)
    image = knee_phantom(SIZE, 0) * np.exp(1j * phase)
    maps = np.asarray(birdcage_maps(COILS, SIZE, SIZE))
    coil_images = maps * image[None]
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coil_images, axes=(-2, -1)),
                                         norm="ortho"), axes=(-2, -1))
    return image.astype(np.complex64), maps, kspace.astype(np.complex64)


@partial(jax.jit, static_argnames=("batch", "num_splits"))
def _draws(key, kspace, maps, batch, num_splits=2):
    """[batch] subset-1 images and plain zero-filled images, one new mask and split per draw."""
    def one(k):
        k_mask, k_split = jax.random.split(k)
        mask = sample_mask(k_mask, SIZE, US)
        (k1, *_), _ = split_kspace_k(k_split, kspace, mask, US, num_splits=num_splits)
        zf = kspace * mask.astype(jnp.float32)
        return coil_combine(ifft2c(k1), maps), coil_combine(ifft2c(zf), maps), ifft2c(k1)
    return jax.vmap(one)(jax.random.split(key, batch))


@pytest.mark.parametrize("num_splits", [2, 3, 4])
def test_mean_of_half_images_converges_to_the_fully_sampled_image(knee_kspace, num_splits):
    """Monte-Carlo over masks and splits; K = 3, 4 amplify each subset's outer lines by
    K / p = 4K, so Var(w) = 4K - 1 per outer column."""
    image, maps, kspace = knee_kspace
    var_w = 4.0 * num_splits - 1.0
    # Independent reference: the RSS of the simulated maps is 1, so the fully sampled
    # coil-combined image is the simulated image itself.
    norm = np.linalg.norm(image)
    coil_ref = np.asarray(maps) * image[None]
    # Expected squared error of the mean of M coil images (Parseval): Var(w) = 2R - 1 = 7 per
    # outer column, so E||err||^2 = 7 / M * (energy of the outer columns).
    outer = ~center_lines(SIZE, CENTER)
    col_energy = (np.abs(kspace) ** 2).sum(axis=(0, 1))
    expected_coil_mse = var_w * col_energy[outer].sum() / col_energy.sum()
    zf_bias = 0.75 * np.sqrt(col_energy[outer].sum() / col_energy.sum())
    repeats = 8
    errors = {m: [] for m in (1, 10, 50, BATCH)}
    coil_errors = {m: [] for m in (10, BATCH)}
    zf_errors = []
    for r in range(repeats):
        halves, zfs, coils = (np.asarray(a) for a in _draws(jax.random.key(100 + r),
                                                            jnp.asarray(kspace), maps, BATCH,
                                                            num_splits))
        for m in errors:
            errors[m].append(np.linalg.norm(halves[:m].mean(0) - image) / norm)
        for m in coil_errors:
            err = np.linalg.norm(coils[:m].mean(0) - coil_ref) ** 2 / norm**2
            coil_errors[m].append(err * m)
        zf_errors.append(np.linalg.norm(zfs.mean(0) - image) / norm)
    rms = {m: float(np.sqrt(np.mean(np.square(e)))) for m, e in errors.items()}
    for m, e in coil_errors.items():
        assert 0.5 < np.mean(e) / expected_coil_mse < 1.6, (m, np.mean(e), expected_coil_mse)
    # Image-domain error shrinks like 1 / sqrt(M) ...
    assert rms[BATCH] < 0.1 * np.sqrt(var_w / 7.0)
    assert rms[50] < rms[10] < rms[1]
    assert 0.5 < rms[10] * np.sqrt(10) / (rms[BATCH] * np.sqrt(BATCH)) < 2.0
    # ... while plain zero-filling stays biased: its mean keeps 1/4 of the outer k-space.
    zf = float(np.mean(zf_errors))
    assert zf > 3 * rms[BATCH] * np.sqrt(7.0 / var_w)
    assert 0.6 < zf / zf_bias < 1.1


@pytest.mark.parametrize("num_splits", [3, 4])
def test_k_subsets_partition_the_outer_lines_uniformly(num_splits):
    masks = sample_masks(jax.random.key(0), 400, SIZE, US)
    subsets = [np.asarray(m) for m in partition_mask(jax.random.key(1), masks, CENTER,
                                                     num_splits)]
    masks = np.asarray(masks)
    centre = np.broadcast_to(center_lines(SIZE, CENTER), masks.shape)
    assert len(subsets) == num_splits
    np.testing.assert_array_equal(np.logical_or.reduce(subsets), masks)
    for i in range(num_splits):
        for j in range(i + 1, num_splits):
            np.testing.assert_array_equal(subsets[i] & subsets[j], centre)
    # Each sampled outer line lands in subset k with probability 1 / K (binomial bounds), and
    # independently of the column.
    outer = masks & ~centre
    n = outer.sum()
    for m in subsets:
        k = (m & outer).sum()
        assert abs(k - n / num_splits) < 5 * np.sqrt(n * (1 / num_splits) * (1 - 1 / num_splits))


@pytest.mark.parametrize("num_splits", [3, 4])
def test_k_subset_amplification_keeps_each_subset_unbiased_exactly(num_splits):
    """Exact expectation over partitions: given the mask, the K subset weights of an acquired
    outer line sum to K / p for every partition, and the labels are exchangeable, so each
    subset's expected weight is 1 / p (the density-compensated zero-filling), which has
    expectation 1 over masks (p = P(outer line sampled))."""
    amp = subset_amplification(US, SIZE, num_splits=num_splits)
    p = 1.0 / 4.0  # "outer" convention at R = 4: outer lines sampled with probability 1 / R
    assert amp == pytest.approx(num_splits / p)
    assert subset_amplification(US, SIZE, num_splits=2) == half_amplification(US, SIZE)
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((3, 8, SIZE)) + 1j * rng.standard_normal((3, 8, SIZE)))
    k = jnp.asarray(k.astype(np.complex64))
    mask = sample_masks(jax.random.key(4), 1, SIZE, US)[0]
    centre = center_lines(SIZE, CENTER)
    outer = np.asarray(mask) & ~centre
    # Density-compensated zero-filling of the acquired lines, written out independently.
    dc = np.asarray(k) * np.where(centre, 1.0, np.where(outer, 1.0 / p, 0.0))[None, None, :]
    for seed in range(3):
        subsets, masks = split_kspace_k(jax.random.key(seed), k, mask, US, num_splits=num_splits)
        assert len(subsets) == num_splits
        np.testing.assert_allclose(np.mean([np.asarray(s) for s in subsets], axis=0), dc,
                                   rtol=1e-5, atol=1e-6)
        for s, m in zip(subsets, masks, strict=True):
            m = np.asarray(m)
            w = np.where(centre, 1.0, np.where(m, num_splits / p, 0.0))
            np.testing.assert_allclose(np.asarray(s), np.asarray(k) * w[None, None, :],
                                       rtol=1e-6)
    # The expectation over masks of the density-compensated weights is 1 on every column.
    many = np.asarray(sample_masks(jax.random.key(9), 20000, SIZE, US), float)
    dc_w = np.where(centre, 1.0, many / p)
    assert np.all(np.abs(dc_w.mean(axis=0) - 1.0) < 5 * np.sqrt((1 / p - 1) / 20000))


def test_k2_split_kspace_k_is_split_kspace():
    rng = np.random.default_rng(1)
    k = jnp.asarray((rng.standard_normal((2, 8, SIZE)) + 0j).astype(np.complex64))
    mask = sample_masks(jax.random.key(6), 1, SIZE, US)[0]
    k1, k2, m1, m2 = split_kspace(jax.random.key(7), k, mask, US)
    (j1, j2), (n1, n2) = split_kspace_k(jax.random.key(7), k, mask, US, num_splits=2)
    for a, b in ((k1, j1), (k2, j2), (m1, n1), (m2, n2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
