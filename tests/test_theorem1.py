"""Theorem 1, shown empirically with a linear (affine) denoiser fitted in closed form.

f(a) = W a + b is fitted by least squares to targets t_i: Noise2clean uses t_i = x_i (Eq. 1),
Noise2noise uses t_i = x_i + n_i2 (Eq. 2). The theorem says the two solutions coincide as
N -> infinity when E{n2 | x + n1} = 0; then their distance shrinks like 1/sqrt(N). When n2 is
correlated with n1, or has a non-zero mean, the gap does not close.
"""

import numpy as np
import pytest

DIM = 12
SIGMA = 0.5
NS = (500, 2000, 8000, 32000)


def _signals(rng, n):
    # Smooth random signals with a non-zero mean: an AR(1) process along the pixel axis.
    x = np.empty((n, DIM))
    x[:, 0] = rng.standard_normal(n)
    for j in range(1, DIM):
        x[:, j] = 0.9 * x[:, j - 1] + np.sqrt(1 - 0.81) * rng.standard_normal(n)
    return x + 1.0


def _affine_fit(inputs, targets):
    a = np.concatenate([inputs, np.ones((inputs.shape[0], 1))], axis=1)
    sol, *_ = np.linalg.lstsq(a, targets, rcond=None)
    return sol  # [(DIM + 1), DIM]: W^T stacked over b


def _gap(n, noise2, seed):
    rng = np.random.default_rng(seed)
    x = _signals(rng, n)
    n1 = SIGMA * rng.standard_normal(x.shape)
    n2 = noise2(rng, n1)
    clean = _affine_fit(x + n1, x)
    noisy = _affine_fit(x + n1, x + n2)
    return np.linalg.norm(noisy - clean) / np.linalg.norm(clean)


def _mean_gap(n, noise2, repeats=8):
    return float(np.mean([_gap(n, noise2, seed) for seed in range(repeats)]))


def independent(rng, n1):
    return SIGMA * rng.standard_normal(n1.shape)


def correlated(rng, n1):
    return 0.5 * n1 + SIGMA * np.sqrt(0.75) * rng.standard_normal(n1.shape)


def biased(rng, n1):
    return 0.3 + SIGMA * rng.standard_normal(n1.shape)


def test_independent_zero_mean_noise_converges_like_inverse_sqrt_n():
    gaps = np.array([_mean_gap(n, independent) for n in NS])
    assert np.all(np.diff(gaps) < 0), gaps
    # Each 4x more samples should halve the gap (1/sqrt(N)); allow Monte-Carlo slack.
    ratios = gaps[:-1] / gaps[1:]
    assert np.all((ratios > 1.5) & (ratios < 2.7)), ratios
    slope = np.polyfit(np.log(NS), np.log(gaps), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.12)
    assert gaps[-1] < gaps[0] / 5  # 64x the data: about 1/8 of the gap


@pytest.mark.parametrize("noise2", [correlated, biased], ids=["correlated", "nonzero_mean"])
def test_violated_conditions_do_not_converge(noise2):
    gaps = np.array([_mean_gap(n, noise2) for n in NS])
    reference = np.array([_mean_gap(n, independent) for n in NS])
    # The gap levels off at a finite bias instead of shrinking with N.
    assert gaps[-1] > 0.6 * gaps[0], gaps
    assert gaps[-1] > 5 * reference[-1], (gaps, reference)
