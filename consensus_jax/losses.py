"""The paper's loss family (Wu et al. 2019, Eqs. 1, 2, 7, 8, 10, 11, 12), each a pure function.

Convention (the paper's beta values depend on it): ``||v||_2^2`` is the squared L2 norm summed over
all pixels and channels of one image, and ``1/N sum_i`` is the mean over the batch axis. For an
image batch ``[B, H, W, C]`` that is ``mean_b sum_{h,w,c} v[b,h,w,c]**2``. The weight decay of
Eq. 10 is the plain sum of squares of every trainable parameter (kernels and biases).

Every function returns ``(scalar, terms)`` where ``terms`` is a dict of every term by name, for
logging and ablation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Terms = dict[str, Array]


def squared_norm(v: Array) -> Array:
    """Per-sample ``||v_i||_2^2``: [B, ...] -> [B], summed over every non-batch axis."""
    v = v.astype(jnp.float32)
    return jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)))


def consensus_average(y1: Array, y2: Array) -> Array:
    """Eq. 9, the denoised image of the pair: ``z = (y1 + y2) / 2`` (any matching shapes)."""
    return 0.5 * (y1 + y2)


def noise2clean(y: Array, x: Array) -> tuple[Array, Terms]:
    """Eq. 1: ``1/N sum_i ||f(x_i + n_i) - x_i||^2``.

    Args:
      y: network output ``f(x + n; Theta)``, [B, H, W, C].
      x: clean target, [B, H, W, C].
    """
    loss = jnp.mean(squared_norm(y - x))
    return loss, {"noise2clean": loss}


def noise2noise(y1: Array, x2: Array) -> tuple[Array, Terms]:
    """Eq. 2: ``1/N sum_i ||f(x_i + n_i1) - (x_i + n_i2)||^2``.

    Args:
      y1: ``f(x + n1; Theta)``, [B, H, W, C].
      x2: the other noisy realisation ``x + n2``, [B, H, W, C].
    """
    loss = jnp.mean(squared_norm(y1 - x2))
    return loss, {"noise2noise": loss}


def consensus_clean(y1: Array, y2: Array, x: Array) -> tuple[Array, Terms]:
    """Eq. 7, the Noise2clean consensus model ``Lc = 1/N sum_i ||(y_i1 + y_i2)/2 - x_i||^2``.

    Also returns the three terms of its factorisation
    ``1/2 ||y1 - x||^2 + 1/2 ||y2 - x||^2 - 1/4 ||y1 - y2||^2`` (each batch-averaged), whose
    weighted sum equals ``Lc``.

    Args:
      y1, y2: ``f(x + n1; Theta1)`` and ``f(x + n2; Theta2)``, [B, H, W, C].
      x: clean target, [B, H, W, C].
    """
    loss = jnp.mean(squared_norm(consensus_average(y1, y2) - x))
    terms = {
        "consensus_clean": loss,
        "fit1_clean": jnp.mean(squared_norm(y1 - x)),
        "fit2_clean": jnp.mean(squared_norm(y2 - x)),
        "disagreement": jnp.mean(squared_norm(y1 - y2)),
    }
    return loss, terms


def consensus_loss(y1: Array, y2: Array, x1: Array, x2: Array) -> tuple[Array, Terms]:
    """Eq. 8, the Noise2noise consensus loss ``Ln``.

    ``Ln = 1/N sum_i [1/2 ||y_i1 - (x_i + n_i2)||^2 + 1/2 ||y_i2 - (x_i + n_i1)||^2
    - 1/4 ||y_i1 - y_i2||^2]`` with ``y_i1 = f(x_i + n_i1; Theta1)`` and
    ``y_i2 = f(x_i + n_i2; Theta2)``.

    Args:
      y1, y2: outputs of the two networks, [B, H, W, C].
      x1, x2: the two noisy halves ``x + n1`` and ``x + n2``, [B, H, W, C].

    Returns:
      ``Ln`` and the terms ``fit1 = mean ||y1 - x2||^2``, ``fit2 = mean ||y2 - x1||^2`` and
      ``disagreement = mean ||y1 - y2||^2``; ``Ln = fit1/2 + fit2/2 - disagreement/4``.
    """
    fit1 = jnp.mean(squared_norm(y1 - x2))
    fit2 = jnp.mean(squared_norm(y2 - x1))
    disagreement = jnp.mean(squared_norm(y1 - y2))
    loss = 0.5 * fit1 + 0.5 * fit2 - 0.25 * disagreement
    return loss, {"consensus": loss, "fit1": fit1, "fit2": fit2, "disagreement": disagreement}


def consensus_mean(ys: list[Array] | tuple[Array, ...]) -> Array:
    """The denoised image of K networks, ``z = (1/K) sum_k y_k`` (Eq. 9 for K = 2)."""
    return consensus_average(*ys) if len(ys) == 2 else sum(ys) / len(ys)


def consensus_loss_k(ys: list[Array] | tuple[Array, ...], xs: list[Array] | tuple[Array, ...]
                     ) -> tuple[Array, Terms]:
    """The consensus loss of K networks on K independent splits (Eq. 8 for K = 2).

    With a_k = y_k - x, the identity ``||mean_k a_k||^2 = (1/K) sum_k ||a_k||^2 -
    (1/(2K^2)) sum_{j,k} ||a_j - a_k||^2`` writes the clean consensus error (Eq. 7) as fit terms
    and a disagreement; each unknown clean error ``||y_k - x||^2`` is replaced by the error
    against the mean of the other splits, ``||y_k - mean_{j != k} x_j||^2``, which has the same
    expectation plus a constant when the splits' noises are independent and zero-mean given the
    input (docs/k_way_consensus.md). So

    ``Ln = 1/N sum_i [(1/K) sum_k ||y_ik - mean_{j != k} x_ij||^2
    - (K - 1)/(2K) D_i]``, ``D_i = (1/(K(K-1))) sum_{j != k} ||y_ij - y_ik||^2``.

    For K = 2 the other splits' mean is the other half and D = ||y1 - y2||^2: Eq. 8 term by term
    (``consensus_loss``), which this calls then.

    Args:
      ys: the K outputs f_k(x_k), each [B, H, W, C].
      xs: the K split reconstructions x_k, each [B, H, W, C].
    Returns:
      ``Ln`` and the terms ``fit1`` .. ``fitK`` and ``disagreement`` (D, batch-averaged).
    """
    k = len(ys)
    if k != len(xs) or k < 2:
        raise ValueError(f"consensus_loss_k needs K >= 2 outputs and as many splits, got "
                         f"{len(ys)} and {len(xs)}.")
    if k == 2:
        return consensus_loss(ys[0], ys[1], xs[0], xs[1])
    total = sum(xs)
    fits = [jnp.mean(squared_norm(y - (total - x) / (k - 1))) for y, x in zip(ys, xs,
                                                                               strict=True)]
    pairs = [jnp.mean(squared_norm(ys[a] - ys[b])) for a in range(k) for b in range(a + 1, k)]
    disagreement = 2.0 * sum(pairs) / (k * (k - 1))
    loss = sum(fits) / k - (k - 1) / (2.0 * k) * disagreement
    return loss, {"consensus": loss, **{f"fit{i + 1}": f for i, f in enumerate(fits)},
                  "disagreement": disagreement}


def weight_decay(*param_sets: Any) -> tuple[Array, Terms]:
    """Eq. 10, ``Lw = ||Theta1||^2 + ||Theta2||^2``: sum of squares of every parameter.

    Takes any number of parameter pytrees (two for the consensus pair, one for a single network).
    """
    total = jnp.zeros((), jnp.float32)
    for params in param_sets:
        for leaf in jax.tree_util.tree_leaves(params):
            total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return total, {"weight_decay": total}


def image_consistency(z: Array, x_est: Array) -> tuple[Array, Terms]:
    """Eq. 11, ``Lr = 1/N sum_i ||z_i - x_est_i||^2`` with ``z = (y1 + y2)/2`` (Eq. 9).

    Args:
      z: the denoised image of Eq. 9, [B, H, W, C].
      x_est: an estimate of x (CT: quarter-dose FBP of all views; MRI: SENSE), [B, H, W, C].
    """
    loss = jnp.mean(squared_norm(z - x_est))
    return loss, {"image_consistency": loss}


def total_loss(y1: Array, y2: Array, x1: Array, x2: Array, x_est: Array | None,
               params: tuple[Any, Any] | None, beta_w: float, beta_r: float
               ) -> tuple[Array, Terms]:
    """Eq. 12, ``L = Ln + beta_w Lw + beta_r Lr`` for the consensus pair (the training loss).

    A term whose weight is 0 is left out (not computed, not in ``terms``), so ``x_est`` may be
    None when ``beta_r == 0`` and ``params`` may be None when ``beta_w == 0``.

    Args:
      y1, y2: ``f(x1; Theta1)``, ``f(x2; Theta2)``, [B, H, W, C].
      x1, x2: the two noisy halves, [B, H, W, C].
      x_est: estimate of x for Eq. 11, [B, H, W, C].
      params: (Theta1, Theta2), pytrees.
      beta_w, beta_r: weights of Eq. 10 and Eq. 11 (paper CT: 5e-6, 0.5; MRI: 1e-6, 5).
    """
    loss, terms = consensus_loss(y1, y2, x1, x2)
    if beta_r:
        lr, _ = image_consistency(consensus_average(y1, y2), x_est)
        loss = loss + beta_r * lr
        terms["image_consistency"] = lr
    if beta_w:
        lw, _ = weight_decay(*params)
        loss = loss + beta_w * lw
        terms["weight_decay"] = lw
    terms["total"] = loss
    return loss, terms
