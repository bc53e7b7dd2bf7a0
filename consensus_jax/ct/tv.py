"""TV-regularised iterative reconstruction, the paper's TV baseline (its reference [3]).

Solves ``min_mu 1/2 ||A mu - p||_W^2 + lambda TV(mu)`` (optionally with ``mu >= 0``). TV is
isotropic: ``sum_pixels sqrt((D_x mu)^2 + (D_y mu)^2)`` with forward differences and zero
difference across the last row/column. Units: mu in 1/mm, p dimensionless, so lambda is in mm.

Two primal-dual solvers (Chambolle & Pock 2011), chosen by ``method``:

- ``"ramp"`` (default): only the data term is dualised, and its dual step is preconditioned by a
  ramp filter along the detector, ``Sigma = s R`` (Pock & Chambolle 2011 allow any symmetric
  positive-definite step metric). Since ``A^T R A`` is nearly a multiple of the identity (the
  identity behind FBP), every spatial frequency converges at about the same rate, whereas plain
  gradient-type steps on ``A^T A`` (a 1/|frequency| blur) leave the fine detail, where TV acts,
  to the end. ``R`` is circulant per view (``ramp_filter_response``), so ``(I + s R)^-1`` is one
  FFT. The primal step is the proximal map of ``tau lambda TV + [mu >= 0]``, solved by a few
  warm-started fast gradient projection (FGP, Beck & Teboulle 2009) iterations on the image's
  dual field; they cost far less than one projection. Steps: ``tau s ||R^1/2 W^1/2 A||^2 < 1``.
  From the FBP, 20-30 iterations reach the converged image to < 1 HU on the quick preset, where
  the plain scheme is still tens of HU away after 100 (measured: see docs/EXPERIMENTS.md).
- ``"plain"``: PDHG with ``K = [A; c grad]``, scalar steps ``sigma = tau = 0.99 / ||K||`` and
  ``c = ||A|| / sqrt(8)``; kept as the reference the tests compare against. Warm-started from the
  FBP it is not monotone: the data dual starts at 0 and integrates the residual over ~1/sigma
  (about a thousand) iterations, so the image first moves away from the FBP.

``select_tv_lambda`` is the documented rule for lambda: a log grid (factor sqrt(10)) around the
geometry's default, extended while the best value sits at an end, keeping the value whose
reconstruction has the lowest RMSE against that slice's full-dose FBP.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax.ct.fbp import fbp
from consensus_jax.ct.geometry import Geometry
from consensus_jax.ct.projector import back_project, forward_project

_GRAD_NORM_BOUND = float(np.sqrt(8.0))
TV_METHODS = ("ramp", "plain")
DEFAULT_DUAL_STEP = 4.0
"""``s`` of the ramp method, dimensionless: the data dual step at the detector's Nyquist frequency
(``R = 1`` there). Larger ``s`` means smaller primal steps and a dual that follows the residual
closely (proximal-gradient-like, monotone); smaller ``s`` lets the dual integrate the residual.
4 took the fewest iterations to 1 HU at the lambdas chosen on quick-preset slices; near plain
least squares (lambda -> 0) smaller steps converge faster (measured: see docs/EXPERIMENTS.md)."""
LAMBDA_GRID_FACTOR = float(np.sqrt(10.0))
_FILTERED_POWER_ITERATIONS = 100


def gradient(images: jax.Array) -> jax.Array:
    """Forward differences [..., 2, H, W] (rows, columns) of images [..., H, W]; zero at the
    last row/column."""
    d_rows = jnp.concatenate([images[..., 1:, :] - images[..., :-1, :],
                              jnp.zeros_like(images[..., :1, :])], axis=-2)
    d_cols = jnp.concatenate([images[..., :, 1:] - images[..., :, :-1],
                              jnp.zeros_like(images[..., :, :1])], axis=-1)
    return jnp.stack([d_rows, d_cols], axis=-3)


def gradient_adjoint(fields: jax.Array) -> jax.Array:
    """The adjoint of ``gradient`` (minus the divergence): [..., 2, H, W] -> [..., H, W]."""
    _, vjp = jax.vjp(gradient, jnp.zeros(fields.shape[:-3] + fields.shape[-2:], fields.dtype))
    return vjp(fields)[0]


def total_variation(images: jax.Array) -> jax.Array:
    """Isotropic TV of each image, [..., H, W] -> [...], in the image's units."""
    g = gradient(images)
    return jnp.sum(jnp.sqrt(jnp.sum(g * g, axis=-3)), axis=(-2, -1))


def ramp_filter_response(num_detectors: int) -> np.ndarray:
    """Eigenvalues of the dual-step metric R of the ramp method, on ``np.fft.rfftfreq(n)``.

    ``R`` is the circulant ramp filter along the detector: ``2 |f|`` (1 at the Nyquist frequency,
    f in cycles per channel), with the zero frequency raised to half the first bin, ``1 / n``, so
    R is positive definite (PDHG needs that) without letting the per-view mean, whose normal
    operator ``A^T A`` is largest, set the step for all other frequencies.

    Returns:
      [num_detectors // 2 + 1] float32, in (0, 1].
    """
    if num_detectors < 2:
        raise ValueError(f"ramp_filter_response: num_detectors must be >= 2, got {num_detectors}.")
    freq = np.fft.rfftfreq(num_detectors)
    return np.maximum(2.0 * freq, 1.0 / num_detectors).astype(np.float32)


def _filter_detectors(sinograms: jax.Array, response: jax.Array) -> jax.Array:
    """Circulant filter along the last axis by its real eigenvalues ``response``."""
    n = sinograms.shape[-1]
    return jnp.fft.irfft(jnp.fft.rfft(sinograms, axis=-1) * response, n=n, axis=-1)


def _power_norm(normal_operator, shape: tuple[int, ...], num_iterations: int,
                key: jax.Array) -> jax.Array:
    """sqrt of the largest eigenvalue of a symmetric PSD operator, by power iteration."""
    x = jax.random.uniform(key, shape, jnp.float32)

    def body(_, x):
        y = normal_operator(x)
        return y / jnp.linalg.norm(y)

    x = jax.lax.fori_loop(0, num_iterations, body, x / jnp.linalg.norm(x))
    return jnp.sqrt(jnp.vdot(x, normal_operator(x)))


def _data_block_norm(geometry: Geometry, filtered: bool, sqrt_weights: jax.Array,
                     num_iterations: int, key: jax.Array) -> jax.Array:
    n = geometry.image.size_px
    response = jnp.asarray(ramp_filter_response(geometry.num_detectors))
    # Per-slice weights make the operator block-diagonal over the batch; power iteration on the
    # stacked images finds the largest block's norm, the one the common step must respect.
    batch = sqrt_weights.shape[0] if sqrt_weights.ndim == 3 else 1

    def normal(x):
        sino = sqrt_weights * forward_project(x, geometry)
        if filtered:
            sino = _filter_detectors(sino, response)
        return back_project(sqrt_weights * sino, geometry)

    return _power_norm(normal, (batch, n, n), num_iterations, key)


@functools.partial(jax.jit, static_argnames=("geometry", "num_iterations", "filtered"))
def projector_norm(geometry: Geometry, num_iterations: int | None = None,
                   key: jax.Array | None = None, filtered: bool = False) -> jax.Array:
    """||A||_2 of the forward projector (mm), or ||R^1/2 A||_2 if ``filtered`` (the norm the
    ``"ramp"`` method of ``tv_reconstruct`` needs), by power iteration (a scalar).

    ``num_iterations`` defaults to 30, or 100 if ``filtered``: the filtered operator's top
    eigenvalues can lie close together (64 px parallel beam: 28.2 after 30 iterations, 29.19 after
    100-300), and an underestimate makes the steps too long.
    """
    key = jax.random.key(0) if key is None else key
    if num_iterations is None:
        num_iterations = _FILTERED_POWER_ITERATIONS if filtered else 30
    return _data_block_norm(geometry, filtered, jnp.ones((), jnp.float32), num_iterations, key)


def tv_objective(images: jax.Array, sinograms: jax.Array, geometry: Geometry, lam: float,
                 weights: jax.Array | None = None) -> jax.Array:
    """``1/2 ||A mu - p||_W^2 + lambda TV(mu)`` summed over the batch (a scalar)."""
    residual = forward_project(images, geometry) - sinograms
    w = 1.0 if weights is None else weights
    return 0.5 * jnp.sum(w * residual ** 2) + lam * jnp.sum(total_variation(images))


def _tv_prox(images: jax.Array, dual: jax.Array, threshold: jax.Array, num_iterations: int,
             nonnegative: bool) -> tuple[jax.Array, jax.Array]:
    """``argmin_x 1/2 ||x - images||^2 + threshold TV(x)`` (and ``x >= 0``), approximately.

    FGP on the dual field ``dual`` [B, 2, H, W] (pixelwise in the unit disk), warm-started from
    the given one; ``x = P(images - threshold grad^T dual)``. The step ``1 / (8 threshold)`` uses
    ``||grad||^2 <= 8``. Returns (x [B, H, W], the final dual field).
    """
    threshold = jnp.maximum(threshold, jnp.finfo(jnp.float32).tiny)
    step = 1.0 / (_GRAD_NORM_BOUND ** 2 * threshold)

    def primal(field):
        x = images - threshold * gradient_adjoint(field)
        return jnp.maximum(x, 0.0) if nonnegative else x

    def body(state, _):
        field, extrapolated, t = state
        field_new = extrapolated + step * gradient(primal(extrapolated))
        field_new = field_new / jnp.maximum(
            1.0, jnp.sqrt(jnp.sum(field_new ** 2, axis=-3, keepdims=True)))
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        extrapolated = field_new + ((t - 1.0) / t_new) * (field_new - field)
        return (field_new, extrapolated, t_new), None

    (dual, _, _), _ = jax.lax.scan(body, (dual, dual, jnp.ones((), jnp.float32)), None,
                                   length=num_iterations)
    return primal(dual), dual


@functools.partial(jax.jit, static_argnames=("geometry", "num_iterations", "nonnegative",
                                             "record_objective", "method", "inner_iterations"))
def tv_reconstruct(sinograms: jax.Array, geometry: Geometry, lam: float, num_iterations: int,
                   weights: jax.Array | None = None, x0: jax.Array | None = None,
                   nonnegative: bool = True, operator_norm: float | None = None,
                   record_objective: bool = False, method: str = "ramp",
                   dual_step: float | None = None,
                   inner_iterations: int = 10) -> tuple[jax.Array, jax.Array]:
    """TV-regularised reconstruction with a fixed number of primal-dual iterations.

    Both methods cost one forward and one back projection per iteration; how close each gets to
    the converged image after 10-100 iterations from the FBP: see docs/EXPERIMENTS.md.

    Args:
      sinograms: [B, views, detectors] post-log line integrals (e.g. the quarter-dose scan).
      geometry: scan geometry (static).
      lam: TV weight lambda, mm (traced: a sweep reuses the compiled function).
      num_iterations: outer iterations, each one forward and one back projection (static).
      weights: optional statistical weights W, [B, views, detectors] or broadcastable
        (e.g. the detected counts); None for unweighted least squares.
      x0: optional starting image [B, H, W] in 1/mm (the FBP is a good one); zeros if None.
      nonnegative: constrain mu >= 0.
      operator_norm: the data block's norm if already known: ``projector_norm(geometry,
        filtered=(method == "ramp"))``, which holds for ``weights=None``; with weights the ramp
        method needs ``||R^1/2 W^1/2 A||`` and computes it when this is None.
      record_objective: also return the objective after every iteration.
      method: "ramp" (ramp-preconditioned data dual, TV by an inner proximal solve) or "plain"
        (PDHG with the gradient dualised, scalar steps); see the module docstring.
      dual_step: ``s`` of the ramp method (default ``DEFAULT_DUAL_STEP``); traced.
      inner_iterations: FGP iterations of the TV proximal map per outer iteration (ramp method;
        static); the start is first denoised by the same map with ten times as many.

    Returns:
      (images [B, H, W] in 1/mm, objective [num_iterations] or an empty array).
    """
    if method not in TV_METHODS:
        raise ValueError(f"tv_reconstruct: method={method!r} is not one of {TV_METHODS}.")
    sinograms = jnp.asarray(sinograms, jnp.float32)
    if sinograms.ndim != 3 or sinograms.shape[1:] != geometry.sinogram_shape:
        raise ValueError(f"tv_reconstruct: expected sinograms [B, {geometry.num_views}, "
                         f"{geometry.num_detectors}], got {tuple(sinograms.shape)}.")
    n = geometry.image.size_px
    x = jnp.zeros((sinograms.shape[0], n, n), jnp.float32) if x0 is None else jnp.asarray(
        x0, jnp.float32)

    def objective(images):
        return (tv_objective(images, sinograms, geometry, lam, weights) if record_objective
                else jnp.zeros((), jnp.float32))

    if method == "plain":
        body, state = _plain_pdhg(sinograms, geometry, lam, weights, x, nonnegative,
                                  operator_norm, objective)
    else:
        body, state = _ramp_pdhg(sinograms, geometry, lam, weights, x, nonnegative,
                                 operator_norm, objective, dual_step, inner_iterations)
    state, history = jax.lax.scan(body, state, None, length=num_iterations)
    return state[0], history if record_objective else jnp.zeros((0,), jnp.float32)


def _plain_pdhg(sinograms, geometry, lam, weights, x, nonnegative, operator_norm, objective):
    """Scan body and initial state of PDHG with K = [A; c grad] and scalar steps."""
    n = geometry.image.size_px
    w = jnp.ones((), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    norm_a = projector_norm(geometry) if operator_norm is None else jnp.asarray(operator_norm)
    scale = norm_a / _GRAD_NORM_BOUND
    step = 0.99 / jnp.sqrt(norm_a ** 2 + (scale * _GRAD_NORM_BOUND) ** 2)
    radius = lam / scale

    def body(state, _):
        x, x_bar, y_data, y_grad = state
        y_data = (y_data + step * (forward_project(x_bar, geometry) - sinograms)) / (1.0 + step / w)
        y_grad = y_grad + step * scale * gradient(x_bar)
        magnitude = jnp.sqrt(jnp.sum(y_grad ** 2, axis=1, keepdims=True))
        y_grad = y_grad / jnp.maximum(1.0, magnitude / radius)
        x_new = x - step * (back_project(y_data, geometry) + scale * gradient_adjoint(y_grad))
        if nonnegative:
            x_new = jnp.maximum(x_new, 0.0)
        return (x_new, 2.0 * x_new - x, y_data, y_grad), objective(x_new)

    state = (x, x, jnp.zeros_like(sinograms),
             jnp.zeros((sinograms.shape[0], 2, n, n), jnp.float32))
    return body, state


def _ramp_pdhg(sinograms, geometry, lam, weights, x, nonnegative, operator_norm, objective,
               dual_step, inner_iterations):
    """Scan body and initial state of the ramp-preconditioned primal-dual method.

    The data term is written ``1/2 ||W^1/2 A mu - W^1/2 p||^2`` so its dual step
    ``(I + s R)^-1 (y + s R (W^1/2 (A mu_bar - p)))`` stays one FFT per view.
    """
    n = geometry.image.size_px
    sqrt_w = jnp.ones((), jnp.float32) if weights is None else jnp.sqrt(
        jnp.asarray(weights, jnp.float32))
    if operator_norm is not None:
        norm = jnp.asarray(operator_norm, jnp.float32)
    elif weights is None:
        norm = projector_norm(geometry, filtered=True)
    else:
        norm = _data_block_norm(geometry, True, sqrt_w, _FILTERED_POWER_ITERATIONS,
                                jax.random.key(0))
    s = jnp.asarray(DEFAULT_DUAL_STEP if dual_step is None else dual_step, jnp.float32)
    # 0.95, not 0.99: power iteration approaches the norm from below.
    tau = 0.95 / (s * norm ** 2)
    metric = s * jnp.asarray(ramp_filter_response(geometry.num_detectors))
    threshold = tau * lam
    # Denoising the start with the same proximal map settles the TV dual field before the first
    # projection; image-domain iterations are cheap.
    x, field = _tv_prox(x, jnp.zeros((x.shape[0], 2, n, n), jnp.float32), threshold,
                        10 * inner_iterations, nonnegative)

    def body(state, _):
        x, x_bar, y, field = state
        residual = sqrt_w * (forward_project(x_bar, geometry) - sinograms)
        y = jnp.fft.irfft((jnp.fft.rfft(y, axis=-1) + metric * jnp.fft.rfft(residual, axis=-1))
                          / (1.0 + metric), n=geometry.num_detectors, axis=-1)
        x_new, field = _tv_prox(x - tau * back_project(sqrt_w * y, geometry), field, threshold,
                                inner_iterations, nonnegative)
        return (x_new, 2.0 * x_new - x, y, field), objective(x_new)

    return body, (x, x, jnp.zeros_like(sinograms), field)


def default_lambda_centre(geometry: Geometry) -> float:
    """Centre of the lambda sweep, mm: ``pixel_size_mm^2 x views / 180`` (an empirical scaling).

    Best lambda (lowest RMSE against the full-dose FBP, 30 ramp iterations from the FBP) on a
    validation slice, and this centre: tiny preset (64 px of 5.9 mm, 180 fan views, 5e3 photons
    at quarter dose) ~190 vs 35; 128 px of 3.0 mm, 576 views, 7.5e3 photons ~30 vs 28; quick
    preset (256 px of 1.5 mm, 1152 views) 10-30 vs 14; 64 px of 3 mm, 90 parallel views, 2.5e3
    photons ~10 vs 4.5. The pixel size enters squared because finer pixels both add pixel
    differences to TV and lower the noise per view; the dose, which the rule does not see, moves
    the best value too, hence the extended grid of ``select_tv_lambda``.
    """
    return float(geometry.image.pixel_size_mm ** 2 * geometry.num_views / 180.0)


def default_lambda_grid(geometry: Geometry, num: int = 5) -> np.ndarray:
    """``num`` lambdas (mm), log-spaced by sqrt(10) and centred on ``default_lambda_centre``."""
    if num < 1:
        raise ValueError(f"default_lambda_grid: num must be >= 1, got {num}.")
    powers = np.arange(num) - (num - 1) / 2.0
    return default_lambda_centre(geometry) * LAMBDA_GRID_FACTOR ** powers


def select_tv_lambda(sinogram: jax.Array, x_reference: jax.Array, geometry: Geometry,
                     num_iterations: int, lambdas: np.ndarray | None = None,
                     mask: np.ndarray | None = None, x0: jax.Array | None = None,
                     operator_norm: float | None = None, max_extensions: int = 3,
                     method: str = "ramp") -> tuple[float, np.ndarray, np.ndarray]:
    """The rule for lambda: sweep a log grid, keep the lowest RMSE against the full-dose FBP.

    Rule: reconstruct the validation slice with every lambda of the grid (default: 5 values
    spaced by sqrt(10) around ``default_lambda_centre``); while the best one is the smallest or
    the largest tried, add one more value beyond it (spaced like the grid's last two at that
    end), at most ``max_extensions`` times, so the choice is an interior minimum unless the
    RMSE keeps falling for a factor 10^(1.5) beyond the grid (then pass ``lambdas``). Each
    reconstruction uses ``num_iterations`` iterations from ``x0``, like the test runs.

    Args:
      sinogram: [views, detectors] low-dose post-log sinogram of the validation slice.
      x_reference: [H, W] the same slice's full-dose FBP, 1/mm.
      geometry: scan geometry.
      num_iterations: iterations per reconstruction (use the value of the test runs).
      lambdas: initial candidates in mm (default ``default_lambda_grid(geometry)``).
      mask: boolean [H, W] region for the RMSE (default: the whole image).
      x0: [H, W] starting image in 1/mm (default: the FBP of ``sinogram``).
      operator_norm: as in ``tv_reconstruct`` for ``method``, if already known.
      max_extensions: most values added beyond the grid's ends.
      method: ``tv_reconstruct``'s method.

    Returns:
      (best lambda, the lambdas tried in increasing order, the RMSE of each in 1/mm).
    """
    grid = default_lambda_grid(geometry) if lambdas is None else np.sort(
        np.asarray(lambdas, np.float64).ravel())
    if grid.size == 0 or np.any(grid <= 0):
        raise ValueError(f"select_tv_lambda: lambdas must be positive (mm), got {grid}.")
    if operator_norm is None:
        operator_norm = projector_norm(geometry, filtered=(method == "ramp"))
    sino = jnp.asarray(sinogram, jnp.float32)[None]
    start = fbp(sino, geometry) if x0 is None else jnp.asarray(x0, jnp.float32).reshape(
        (1,) + geometry.image.shape)
    region = np.ones(geometry.image.shape, bool) if mask is None else np.asarray(mask, bool)
    reference = np.asarray(x_reference)

    def rmse(lam: float) -> float:
        image, _ = tv_reconstruct(sino, geometry, lam, num_iterations, x0=start,
                                  operator_norm=operator_norm, method=method)
        diff = np.asarray(image[0]) - reference
        return float(np.sqrt(np.mean(diff[region] ** 2)))

    tried = {float(lam): rmse(float(lam)) for lam in grid}
    for _ in range(max_extensions):
        values = sorted(tried)
        best = min(values, key=tried.get)
        if len(values) > 1 and values[0] < best < values[-1]:
            break
        if best == values[0]:
            ratio = values[1] / values[0] if len(values) > 1 else LAMBDA_GRID_FACTOR
            new = values[0] / ratio
        else:
            ratio = values[-1] / values[-2] if len(values) > 1 else LAMBDA_GRID_FACTOR
            new = values[-1] * ratio
        tried[new] = rmse(new)
    values = np.asarray(sorted(tried))
    errors = np.asarray([tried[v] for v in values])
    return float(values[int(np.argmin(errors))]), values, errors
