"""TV-regularised reconstruction: beats FBP on a piecewise-constant phantom, the objective
decreases, with lambda -> 0 it reaches the closed-form (weighted) least-squares solution, the TV
proximal map matches scikit-image's Chambolle solver, the ramp-preconditioned method reaches the
converged image far sooner than plain PDHG, and the lambda rule extends its grid past an end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.restoration import denoise_tv_chambolle

from consensus_jax.ct.dose import MU_WATER_PER_MM, hu_to_mu, simulate_dose_pair
from consensus_jax.ct.fbp import fbp
from consensus_jax.ct.geometry import Ellipse, ImageGrid, ParallelBeamGeometry, ellipse_image
from consensus_jax.ct.projector import forward_project
from consensus_jax.ct.tv import (
    LAMBDA_GRID_FACTOR,
    _tv_prox,
    default_lambda_centre,
    default_lambda_grid,
    gradient,
    gradient_adjoint,
    projector_norm,
    ramp_filter_response,
    select_tv_lambda,
    total_variation,
    tv_objective,
    tv_reconstruct,
)

BODY_HU = (Ellipse((0.0, 0.0), (85.0, 65.0), 0.0, 1000.0),
           Ellipse((25.0, 10.0), (15.0, 10.0), 0.3, 200.0),
           Ellipse((-30.0, -10.0), (12.0, 12.0), 0.0, -300.0))
HU_PER_MU = 1000.0 / MU_WATER_PER_MM


@pytest.fixture(scope="module")
def noisy_case():
    geometry = ParallelBeamGeometry(ImageGrid(64, 3.0), num_views=90, num_detectors=92,
                                    detector_spacing_mm=3.0)
    mu = hu_to_mu(ellipse_image(BODY_HU, geometry.image, supersampling=4) - 1000.0)
    p_full, p_low = simulate_dose_pair(forward_project(mu, geometry), jax.random.key(0), 1e4)
    return geometry, np.asarray(mu), p_full, p_low


@pytest.fixture(scope="module")
def converged_case(noisy_case):
    """The TV image at lambda = 1 mm from the FBP, by both methods run far past convergence;
    they must agree, which checks each against an independent algorithm."""
    geometry, _, _, p_low = noisy_case
    x0 = fbp(p_low, geometry)[None]
    norms = {m: projector_norm(geometry, filtered=(m == "ramp")) for m in ("ramp", "plain")}
    long = {m: np.asarray(tv_reconstruct(p_low[None], geometry, 1.0, n, x0=x0,
                                         operator_norm=norms[m], method=m)[0][0])
            for m, n in (("ramp", 400), ("plain", 2000))}
    return geometry, p_low, x0, norms, long


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


def test_ramp_filter_response_is_a_positive_ramp():
    response = ramp_filter_response(10)
    np.testing.assert_allclose(response, [0.1, 0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="num_detectors"):
        ramp_filter_response(1)


def test_tv_prox_matches_skimage_chambolle():
    rng = np.random.default_rng(1)
    image = np.zeros((40, 40), np.float32)
    image[10:30, 8:25] = 1.0
    image += 0.2 * rng.standard_normal(image.shape).astype(np.float32)
    # skimage minimises 1/2 ||u - f||^2 + weight TV(u) with the same forward differences.
    reference = denoise_tv_chambolle(image.astype(np.float64), weight=0.3, eps=1e-12,
                                     max_num_iter=20000)
    field = jnp.zeros((1, 2, 40, 40), jnp.float32)
    ours, _ = _tv_prox(jnp.asarray(image)[None], field, jnp.float32(0.3), 2000, False)
    np.testing.assert_allclose(np.asarray(ours[0]), reference, atol=2e-3)
    clipped, _ = _tv_prox(jnp.asarray(image)[None], field, jnp.float32(0.3), 200, True)
    assert float(jnp.min(clipped)) >= 0.0


@pytest.mark.parametrize("method", ["ramp", "plain"])
def test_tv_beats_fbp_and_objective_decreases(noisy_case, method):
    geometry, mu, _, p_low = noisy_case
    fov = geometry.image.fov_mask()
    x_fbp = np.asarray(fbp(p_low, geometry))
    images, history = tv_reconstruct(p_low[None], geometry, 1.0, 100, record_objective=True,
                                     method=method)
    history = np.asarray(history)
    start = float(tv_objective(jnp.zeros((1, 64, 64)), p_low[None], geometry, 1.0))

    def rmse(x):
        return np.sqrt(np.mean((x - mu)[fov] ** 2))

    assert rmse(np.asarray(images[0])) < 0.7 * rmse(x_fbp)
    assert history[-1] < 0.01 * start
    if method == "plain":
        # PDHG is not monotone step by step, but the objective falls decade by decade.
        assert np.all(np.diff(history[::10]) < 0)
    else:
        # The same, to float32 round-off once converged (by ~50 iterations).
        assert np.all(np.diff(history[::10]) < 1e-6 * history[-1]), history


@pytest.mark.parametrize("method", ["ramp", "plain"])
@pytest.mark.parametrize("weighted", [False, True])
def test_lambda_to_zero_reaches_least_squares(method, weighted):
    geometry = ParallelBeamGeometry(ImageGrid(32, 6.0), num_views=60, num_detectors=46,
                                    detector_spacing_mm=6.0)
    mu = jnp.asarray(hu_to_mu(ellipse_image(BODY_HU, geometry.image, supersampling=4) - 1000.0))
    clean = forward_project(mu, geometry)
    noise = 0.005 * jax.random.normal(jax.random.key(1), clean.shape)
    p = clean + noise
    weights = (jax.random.uniform(jax.random.key(2), (1,) + clean.shape, minval=0.3, maxval=3.0)
               if weighted else None)
    w = np.ones(clean.size) if weights is None else np.asarray(weights, np.float64).ravel()
    # Independent reference: the explicit system matrix and the weighted normal equations in
    # float64 (the matrix has full column rank, condition number ~600).
    basis = jnp.eye(32 * 32, dtype=jnp.float32).reshape(-1, 32, 32)
    matrix = np.asarray(forward_project(basis, geometry), np.float64).reshape(32 * 32, -1).T
    gram = matrix.T @ (w[:, None] * matrix)
    ls = np.linalg.solve(gram, matrix.T @ (w * np.asarray(p, np.float64).ravel())).reshape(32, 32)
    norm = projector_norm(geometry)
    assert float(norm) == pytest.approx(np.sqrt(np.linalg.eigvalsh(matrix.T @ matrix)[-1]),
                                        rel=1e-3)
    if method == "ramp":
        # ||R^1/2 A|| against the explicit circulant R (one block per view) and the matrix.
        response = ramp_filter_response(46).astype(np.float64)
        eigenvalues = np.concatenate([response, response[1:23][::-1]])
        circulant = np.real(np.fft.ifft(eigenvalues[:, None] * np.fft.fft(np.eye(46), axis=0),
                                        axis=0))
        filtered = matrix.T @ np.kron(np.eye(60), circulant) @ matrix
        assert float(projector_norm(geometry, filtered=True)) == pytest.approx(
            np.sqrt(np.linalg.eigvalsh(filtered)[-1]), rel=1e-3)
    # The ramp method computes its weighted norm itself; unweighted, pass ||R^1/2 A||. Its
    # default dual step suits TV-dominated problems; near plain least squares a small one
    # converges faster (1000 iterations: 0.05% vs 1.5% from the solution with the default).
    operator_norm = (projector_norm(geometry, filtered=True) if method == "ramp" else norm)
    operator_norm = None if (weighted and method == "ramp") else operator_norm
    dual_step = 0.5 if method == "ramp" else None
    errors = []
    for iterations in (200, 1000):
        images, _ = tv_reconstruct(p[None], geometry, 1e-7, iterations, weights=weights,
                                   nonnegative=False, operator_norm=operator_norm,
                                   method=method, dual_step=dual_step)
        errors.append(np.linalg.norm(np.asarray(images[0]) - ls) / np.linalg.norm(ls))
    assert errors[1] < 0.02 and errors[1] < 0.3 * errors[0], errors


def test_ramp_method_converges_faster_than_plain_pdhg(converged_case):
    geometry, p_low, x0, norms, long = converged_case
    # Two different algorithms agree on the solution (HU, whole image); plain PDHG is still
    # ~0.4 HU away after 2000 iterations.
    agreement = np.sqrt(np.mean((long["ramp"] - long["plain"]) ** 2)) * HU_PER_MU
    assert agreement < 0.6, agreement

    def run(method):
        image, history = tv_reconstruct(p_low[None], geometry, 1.0, 50, x0=x0,
                                        operator_norm=norms[method], method=method,
                                        record_objective=True)
        distance = np.sqrt(np.mean((np.asarray(image[0]) - long["ramp"]) ** 2)) * HU_PER_MU
        return float(distance), np.asarray(history)

    (ramp_50, history), (plain_50, _) = run("ramp"), run("plain")
    # Measured: 0.2 HU vs 40-60 HU.
    assert ramp_50 < 0.5 and ramp_50 < 0.05 * plain_50, (ramp_50, plain_50)
    # From the FBP the ramp method's objective falls at every iteration (to float32 round-off).
    assert np.all(np.diff(history) < 1e-6 * history[-1]), history


def test_default_lambda_grid_is_centred_and_spaced_by_sqrt10(noisy_case):
    geometry = noisy_case[0]
    grid = default_lambda_grid(geometry)
    assert grid.shape == (5,)
    np.testing.assert_allclose(grid[1:] / grid[:-1], np.sqrt(10.0), rtol=1e-12)
    assert grid[2] == pytest.approx(3.0 ** 2 * 90 / 180)
    assert default_lambda_centre(geometry) == pytest.approx(grid[2])


def test_select_tv_lambda_picks_the_interior_minimum(noisy_case):
    geometry, _, p_full, p_low = noisy_case
    x_full = fbp(p_full, geometry)
    lambdas = np.array([1e-3, 1e-1, 1.0, 1e1, 1e2])
    best, tried, rmses = select_tv_lambda(p_low, x_full, geometry, 30, lambdas,
                                          mask=geometry.image.fov_mask())
    assert best == tried[np.argmin(rmses)]
    assert best not in (lambdas[0], lambdas[-1]), rmses
    # An interior minimum on the initial grid adds no values.
    np.testing.assert_array_equal(tried, lambdas)


def test_select_tv_lambda_extends_a_grid_whose_best_is_at_an_end(noisy_case):
    geometry, _, p_full, p_low = noisy_case
    x_full = fbp(p_full, geometry)
    mask = geometry.image.fov_mask()
    # Far too small: the RMSE falls towards the top end, which is extended 3 times.
    low = np.array([1e-4, 1e-4 * LAMBDA_GRID_FACTOR])
    best, tried, rmses = select_tv_lambda(p_low, x_full, geometry, 30, low, mask=mask)
    np.testing.assert_allclose(tried, 1e-4 * LAMBDA_GRID_FACTOR ** np.arange(5), rtol=1e-9)
    assert best == tried[-1] and np.all(np.diff(rmses) < 0), rmses
    # The minimum (about 10 mm) lies one step past the grid's top: two extensions, then stop.
    grid = 0.3 * LAMBDA_GRID_FACTOR ** np.arange(3)
    best, tried, rmses = select_tv_lambda(p_low, x_full, geometry, 30, grid, mask=mask)
    np.testing.assert_allclose(tried, 0.3 * LAMBDA_GRID_FACTOR ** np.arange(5), rtol=1e-9)
    assert best == pytest.approx(0.3 * LAMBDA_GRID_FACTOR ** 3), rmses
