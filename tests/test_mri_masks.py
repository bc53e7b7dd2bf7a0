"""Cartesian masks: centre lines, binomial line counts, conventions, acquired region, keys."""

import jax
import numpy as np
import pytest

from consensus_jax.mri.masks import (
    Undersampling,
    center_lines,
    outer_line_probability,
    sample_mask,
    sample_masks,
)

WIDTH = 128
NUM_SLICES = 400


def _binomial_ok(count: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


def test_centre_always_sampled_and_outer_lines_binomial():
    us = Undersampling(4.0, 16)
    masks = np.asarray(sample_masks(jax.random.key(0), NUM_SLICES, WIDTH, us))
    assert masks.shape == (NUM_SLICES, WIDTH) and masks.dtype == bool
    centre = np.zeros(WIDTH, bool)
    centre[WIDTH // 2 - 8:WIDTH // 2 + 8] = True
    assert masks[:, centre].all()
    outer = masks[:, ~centre]
    # Outer lines: independent Bernoulli(1/R), here p = 1/4 in the "outer" convention.
    assert _binomial_ok(outer.sum(), outer.size, 0.25)
    per_slice = outer.sum(axis=1)
    assert abs(per_slice.mean() - 112 * 0.25) < 1.0
    assert abs(per_slice.var() - 112 * 0.25 * 0.75) < 0.3 * 112 * 0.25 * 0.75
    # The first and last outer columns are sampled as often as the others.
    assert _binomial_ok(masks[:, 0].sum(), NUM_SLICES, 0.25)


def test_fastmri_convention_counts_all_lines():
    us = Undersampling(4.0, 16, convention="fastmri")
    p = outer_line_probability(us, WIDTH)
    assert p == pytest.approx((WIDTH / 4 - 16) / (WIDTH - 16))
    masks = np.asarray(sample_masks(jax.random.key(1), NUM_SLICES, WIDTH, us))
    # About W / R lines in total, centre included.
    assert abs(masks.sum(axis=1).mean() - WIDTH / 4) < 1.0


def test_zero_padded_edges_are_never_sampled():
    us = Undersampling(4.0, 16)
    acquired = (10, 120)
    masks = np.asarray(sample_masks(jax.random.key(2), NUM_SLICES, WIDTH, us, acquired))
    assert not masks[:, :10].any() and not masks[:, 120:].any()
    outer = masks[:, 10:120][:, ~center_lines(WIDTH, 16)[10:120]]
    assert _binomial_ok(outer.sum(), outer.size, 0.25)
    # fastMRI convention: the probability counts acquired columns only.
    assert outer_line_probability(Undersampling(4.0, 16, "fastmri"), 110) == pytest.approx(
        (110 / 4 - 16) / (110 - 16))


def test_keys_give_different_masks_and_same_key_same_mask():
    us = Undersampling(4.0, 16)
    a = np.asarray(sample_mask(jax.random.key(3), WIDTH, us))
    b = np.asarray(sample_mask(jax.random.key(4), WIDTH, us))
    c = np.asarray(sample_mask(jax.random.key(3), WIDTH, us))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    per_slice = np.asarray(sample_masks(jax.random.key(5), 8, WIDTH, us))
    assert len({m.tobytes() for m in per_slice}) == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"acceleration": 1.0}, "acceleration"),
    ({"num_center_lines": 0}, "num_center_lines"),
    ({"convention": "gaussian"}, "convention"),
])
def test_bad_undersampling_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Undersampling(**kwargs)


def test_impossible_patterns_are_rejected():
    with pytest.raises(ValueError, match="fewer than the 48 centre lines"):
        outer_line_probability(Undersampling(8.0, 48, "fastmri"), 320)
    with pytest.raises(ValueError, match="outside the acquired columns"):
        sample_mask(jax.random.key(0), WIDTH, Undersampling(4.0, 16), (70, 128))
    with pytest.raises(ValueError, match="num_center_lines"):
        sample_mask(jax.random.key(0), 8, Undersampling(4.0, 16))
