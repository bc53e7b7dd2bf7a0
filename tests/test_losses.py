"""Each loss equals a plain-numpy transcription of its equation in Wu et al. 2019."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax import losses

B, H, W, C = 3, 8, 6, 2


def _rand(seed, shape=(B, H, W, C)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float64)


def _np_sq(v):
    # ||v_i||^2 summed over pixels and channels, one value per sample.
    return np.array([np.sum(v[i] ** 2) for i in range(v.shape[0])])


@pytest.fixture(scope="module")
def tensors():
    return {k: _rand(i) for i, k in enumerate(["y1", "y2", "x", "x1", "x2", "x_est"])}


def test_noise2clean_eq1(tensors):
    y, x = tensors["y1"], tensors["x"]
    ref = np.mean([np.sum((y[i] - x[i]) ** 2) for i in range(B)])
    val, terms = losses.noise2clean(jnp.asarray(y), jnp.asarray(x))
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    assert set(terms) == {"noise2clean"}


def test_noise2noise_eq2(tensors):
    y1, x2 = tensors["y1"], tensors["x2"]
    ref = sum(np.sum((y1[i] - x2[i]) ** 2) for i in range(B)) / B
    val, _ = losses.noise2noise(jnp.asarray(y1), jnp.asarray(x2))
    np.testing.assert_allclose(val, ref, rtol=1e-5)


def test_consensus_eq8(tensors):
    t = tensors
    ref = 0.0
    for i in range(B):
        ref += (0.5 * np.sum((t["y1"][i] - t["x2"][i]) ** 2)
                + 0.5 * np.sum((t["y2"][i] - t["x1"][i]) ** 2)
                - 0.25 * np.sum((t["y1"][i] - t["y2"][i]) ** 2))
    ref /= B
    val, terms = losses.consensus_loss(*(jnp.asarray(t[k]) for k in ("y1", "y2", "x1", "x2")))
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    np.testing.assert_allclose(terms["fit1"], np.mean(_np_sq(t["y1"] - t["x2"])), rtol=1e-5)
    np.testing.assert_allclose(terms["fit2"], np.mean(_np_sq(t["y2"] - t["x1"])), rtol=1e-5)
    np.testing.assert_allclose(terms["disagreement"], np.mean(_np_sq(t["y1"] - t["y2"])),
                               rtol=1e-5)


def test_eq7_factorisation(tensors):
    """||(y1+y2)/2 - x||^2 = 1/2||y1-x||^2 + 1/2||y2-x||^2 - 1/4||y1-y2||^2 for any tensors."""
    t = tensors
    lc, terms = losses.consensus_clean(*(jnp.asarray(t[k]) for k in ("y1", "y2", "x")))
    direct = np.mean(_np_sq(0.5 * (t["y1"] + t["y2"]) - t["x"]))
    factored = (0.5 * terms["fit1_clean"] + 0.5 * terms["fit2_clean"]
                - 0.25 * terms["disagreement"])
    np.testing.assert_allclose(lc, direct, rtol=1e-5)
    np.testing.assert_allclose(factored, direct, rtol=1e-5)


def test_consensus_with_clean_target_equals_lc(tensors):
    """Eq. 8 with x1 = x2 = x (no noise) is exactly Eq. 7."""
    t = tensors
    x = jnp.asarray(t["x"])
    ln, _ = losses.consensus_loss(jnp.asarray(t["y1"]), jnp.asarray(t["y2"]), x, x)
    lc, _ = losses.consensus_clean(jnp.asarray(t["y1"]), jnp.asarray(t["y2"]), x)
    np.testing.assert_allclose(ln, lc, rtol=1e-5)


def test_weight_decay_eq10():
    p1 = {"a": _rand(1, (3, 3)), "b": {"c": _rand(2, (4,))}}
    p2 = {"a": _rand(3, (3, 3)), "b": {"c": _rand(4, (4,))}}
    ref = sum(np.sum(v ** 2) for v in [p1["a"], p1["b"]["c"], p2["a"], p2["b"]["c"]])
    to_j = lambda t: jax.tree_util.tree_map(jnp.asarray, t)
    val, _ = losses.weight_decay(to_j(p1), to_j(p2))
    np.testing.assert_allclose(val, ref, rtol=1e-5)


def test_image_consistency_eq11(tensors):
    t = tensors
    z = 0.5 * (t["y1"] + t["y2"])
    ref = np.mean([np.sum((z[i] - t["x_est"][i]) ** 2) for i in range(B)])
    val, _ = losses.image_consistency(jnp.asarray(z), jnp.asarray(t["x_est"]))
    np.testing.assert_allclose(val, ref, rtol=1e-5)


def test_total_eq12(tensors):
    t = tensors
    p1, p2 = {"w": jnp.asarray(_rand(7, (5,)))}, {"w": jnp.asarray(_rand(8, (5,)))}
    bw, br = 5e-6 * 1e4, 0.5
    args = [jnp.asarray(t[k]) for k in ("y1", "y2", "x1", "x2", "x_est")]
    val, terms = losses.total_loss(*args, (p1, p2), beta_w=bw, beta_r=br)
    ln = losses.consensus_loss(*args[:4])[0]
    lw = np.sum(np.asarray(p1["w"]) ** 2) + np.sum(np.asarray(p2["w"]) ** 2)
    lr = np.mean(_np_sq(0.5 * (t["y1"] + t["y2"]) - t["x_est"]))
    np.testing.assert_allclose(val, ln + bw * lw + br * lr, rtol=1e-5)
    assert {"consensus", "fit1", "fit2", "disagreement", "weight_decay", "image_consistency",
            "total"} <= set(terms)
    # A zero weight leaves its term out, so the batch needs no x_est and no params are read.
    val0, terms0 = losses.total_loss(*args[:4], None, None, beta_w=0.0, beta_r=0.0)
    np.testing.assert_allclose(val0, ln, rtol=1e-6)
    assert "image_consistency" not in terms0 and "weight_decay" not in terms0


def test_consensus_average_eq9():
    y1, y2 = _rand(11, (2, 4, 4, 1)), _rand(12, (2, 4, 4, 1))
    np.testing.assert_allclose(losses.consensus_average(jnp.asarray(y1), jnp.asarray(y2)),
                               (y1 + y2) / 2, rtol=1e-6)


def test_gradients_finite_and_jit_equals_eager(tensors):
    t = tensors
    args = [jnp.asarray(t[k], jnp.float32) for k in ("y1", "y2", "x1", "x2", "x_est")]
    p = ({"w": jnp.ones(3)}, {"w": 2 * jnp.ones(3)})
    f = lambda y1, y2: losses.total_loss(y1, y2, *args[2:], p, beta_w=0.1, beta_r=0.5)[0]
    eager = f(*args[:2])
    jitted = jax.jit(f)(*args[:2])
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    grads = jax.grad(f, argnums=(0, 1))(*args[:2])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    # d/dy1 of the total, by hand: (y1-x2) - (y1-y2)/2 + beta_r (z - x_est), over B.
    y1, y2, x1, x2, x_est = (np.asarray(a, np.float64) for a in args)
    z = 0.5 * (y1 + y2)
    g1 = ((y1 - x2) - 0.5 * (y1 - y2) + 0.5 * (z - x_est)) / B
    np.testing.assert_allclose(grads[0], g1, rtol=1e-4, atol=1e-6)
