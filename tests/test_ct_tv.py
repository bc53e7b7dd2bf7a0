"""TV-regularised reconstruction: beats FBP on a piecewise-constant phantom, the objective
decreases, and with lambda -> 0 it reaches the closed-form least-squares solution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.ct.dose import hu_to_mu, simulate_dose_pair
from consensus_jax.ct.fbp import fbp
from consensus_jax.ct.geometry import Ellipse, ImageGrid, ParallelBeamGeometry, ellipse_image
from consensus_jax.ct.projector import forward_project
from consensus_jax.ct.tv import (
    gradient,
    gradient_adjoint,
    projector_norm,
    select_tv_lambda,
    total_variation,
    tv_reconstruct,
)

BODY_HU = (Ellipse((0.0, 0.0), (85.0, 65.0), 0.0, 1000.0),
           Ellipse((25.0, 10.0), (15.0, 10.0), 0.3, 200.0),
           Ellipse((-30.0, -10.0), (12.0, 12.0), 0.0, -300.0))


@pytest.fixture(scope="module")
def noisy_case():
    geometry = ParallelBeamGeometry(ImageGrid(64, 3.0), num_views=90, num_detectors=92,
                                    detector_spacing_mm=3.0)
    mu = hu_to_mu(ellipse_image(BODY_HU, geometry.image, supersampling=4) - 1000.0)
    p_full, p_low = simulate_dose_pair(forward_project(mu, geometry), jax.random.key(0), 1e4)
    return geometry, np.asarray(mu), p_full, p_low


def test_gradient_adjoint_and_tv_of_a_step():
    rng = np.random.default_rng(0)
    u = jnp.asarray(rng.standard_normal((2, 9, 7)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 2, 9, 7)), jnp.float32)
    lhs = float(jnp.sum(gradient(u) * v))
    rhs = float(jnp.sum(u * gradient_adjoint(v)))
    assert lhs == pytest.approx(rhs, rel=1e-5)
    step = jnp.zeros((8, 8)).at[:, 3:].set(2.0)
    # A vertical edge of height 2 across 8 rows: TV = 16.
    assert float(total_variation(step)) == pytest.approx(16.0)


def test_tv_beats_fbp_and_objective_decreases(noisy_case):
    geometry, mu, _, p_low = noisy_case
    fov = geometry.image.fov_mask()
    x_fbp = np.asarray(fbp(p_low, geometry))
    images, history = tv_reconstruct(p_low[None], geometry, 1.0, 100, record_objective=True)
    history = np.asarray(history)

    def rmse(x):
        return np.sqrt(np.mean((x - mu)[fov] ** 2))

    assert rmse(np.asarray(images[0])) < 0.7 * rmse(x_fbp)
    assert history[-1] < 0.01 * history[0]
    # PDHG is not monotone step by step, but the objective falls decade by decade.
    assert np.all(np.diff(history[::10]) < 0)


def test_lambda_to_zero_reaches_least_squares():
    geometry = ParallelBeamGeometry(ImageGrid(32, 6.0), num_views=60, num_detectors=46,
                                    detector_spacing_mm=6.0)
    mu = jnp.asarray(hu_to_mu(ellipse_image(BODY_HU, geometry.image, supersampling=4) - 1000.0))
    clean = forward_project(mu, geometry)
    noise = 0.005 * jax.random.normal(jax.random.key(1), clean.shape)
    p = clean + noise
    # Independent reference: the explicit system matrix and the normal equations in float64
    # (the matrix has full column rank, condition number ~600).
    basis = jnp.eye(32 * 32, dtype=jnp.float32).reshape(-1, 32, 32)
    matrix = np.asarray(forward_project(basis, geometry), np.float64).reshape(32 * 32, -1).T
    gram = matrix.T @ matrix
    ls = np.linalg.solve(gram, matrix.T @ np.asarray(p, np.float64).ravel()).reshape(32, 32)
    norm = projector_norm(geometry)
    assert float(norm) == pytest.approx(np.sqrt(np.linalg.eigvalsh(gram)[-1]), rel=1e-3)
    errors = []
    for iterations in (200, 1000):
        images, _ = tv_reconstruct(p[None], geometry, 1e-7, iterations, nonnegative=False,
                                   operator_norm=norm)
        errors.append(np.linalg.norm(np.asarray(images[0]) - ls) / np.linalg.norm(ls))
    assert errors[1] < 0.02 and errors[1] < 0.3 * errors[0], errors


def test_select_tv_lambda_picks_the_interior_minimum(noisy_case):
    geometry, _, p_full, p_low = noisy_case
    x_full = fbp(p_full, geometry)
    lambdas = np.array([1e-3, 1e-1, 1.0, 1e1, 1e2])
    best, tried, rmses = select_tv_lambda(p_low, x_full, geometry, 60, lambdas,
                                          mask=geometry.image.fov_mask())
    assert best == tried[np.argmin(rmses)]
    assert best not in (lambdas[0], lambdas[-1]), rmses
