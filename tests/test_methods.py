"""The training schemes as plug-ins (consensus_jax.methods): the K-way consensus loss against
Eq. 7-8 term by term, Noise2Inverse against its definition, the held-out losses' bias, and the
rule that no code outside ``methods/`` branches on a scheme's name."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax import losses, methods, synthetic
from consensus_jax.models import UNetConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL = UNetConfig(base_features=4, depth=2)


def _norm2(v: np.ndarray) -> np.ndarray:
    return np.sum(np.asarray(v, np.float64) ** 2, axis=(1, 2, 3))


def _images(k: int, seed: int = 0, shape=(3, 8, 8, 1)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(k)]


def test_k2_is_eq8_term_by_term():
    y1, y2, x1, x2 = _images(4)
    loss, terms = losses.consensus_loss_k([y1, y2], [x1, x2])
    fit1, fit2, dis = (np.mean(_norm2(y1 - x2)), np.mean(_norm2(y2 - x1)),
                       np.mean(_norm2(y1 - y2)))
    np.testing.assert_allclose(terms["fit1"], fit1, rtol=1e-5)
    np.testing.assert_allclose(terms["fit2"], fit2, rtol=1e-5)
    np.testing.assert_allclose(terms["disagreement"], dis, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * fit1 + 0.5 * fit2 - 0.25 * dis, rtol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_k_way_identity_with_noiseless_splits_is_the_clean_consensus_error(k):
    # With every split equal to the clean image, each fit term is the clean error of its
    # network and the loss must be ||mean_k y_k - x||^2 exactly (Eq. 7 for K networks).
    ys = _images(k, seed=1)
    x = _images(1, seed=2)[0]
    loss, terms = losses.consensus_loss_k(ys, [x] * k)
    clean = np.mean(_norm2(np.mean(ys, axis=0) - x))
    np.testing.assert_allclose(loss, clean, rtol=1e-5)
    pairs = [np.mean(_norm2(ys[a] - ys[b])) for a in range(k) for b in range(k) if a != b]
    np.testing.assert_allclose(terms["disagreement"], np.mean(pairs), rtol=1e-5)


@pytest.mark.parametrize("k", [3, 4])
def test_k_way_loss_is_the_clean_error_plus_a_constant(k):
    # Over independent zero-mean noise draws, E[Ln] - Lc must not depend on the outputs: the
    # same constant for two unrelated sets of outputs (Theorem 1's argument for K splits).
    x = _images(1, seed=3, shape=(1, 8, 8, 1))[0]
    rng = np.random.default_rng(4)
    sigma, draws = 0.7, 4000
    fn = jax.jit(lambda ys, xs: losses.consensus_loss_k(ys, xs)[0])
    gaps = []
    for seed in (5, 6):
        ys = _images(k, seed=seed, shape=(1, 8, 8, 1))
        clean = float(np.mean(_norm2(np.mean(ys, axis=0) - x)))
        noise = sigma * rng.standard_normal((draws, k, 8, 8, 1)).astype(np.float32)
        xs = [jnp.asarray(x + noise[:, j]) for j in range(k)]
        yb = [jnp.broadcast_to(y, (draws, 8, 8, 1)) for y in ys]
        gaps.append(float(fn(yb, xs)) - clean)
    # The constant: each fit term carries the noise of the mean of K - 1 splits.
    constant = 64 * sigma ** 2 / (k - 1)
    np.testing.assert_allclose(gaps, [constant, constant], rtol=0.05)


def test_noise2inverse_is_its_definition():
    k = 3
    xs = [jnp.asarray(x) for x in _images(k, seed=7, shape=(2, 16, 16, 1))]
    method = methods.make("noise2inverse", MODEL, num_splits=k)
    params = method.init_params(jax.random.PRNGKey(0))
    loss, terms = method.loss(params, dict(zip(methods.split_keys(k), xs, strict=True)))
    (net,) = method.split_params(params)
    expected = 0.0
    for j in range(k):
        others = sum(x for i, x in enumerate(xs) if i != j) / (k - 1)
        y = method.apply({"net1": net}, [others])[0]
        expected += float(np.mean(_norm2(np.asarray(y) - np.asarray(xs[j])))) / k
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    assert set(terms) == {"noise2inverse", "total"}
    z = method.denoise(params, *xs)
    manual = np.mean([np.asarray(method.apply_whole(net, sum(x for i, x in enumerate(xs)
                                                              if i != j) / (k - 1)))
                      for j in range(k)], axis=0)
    np.testing.assert_allclose(np.asarray(z), manual, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,k", [("consensus", 3), ("noise2inverse", 2), ("noise2inverse", 4)])
def test_new_schemes_train_and_denoise(kind, k):
    from consensus_jax import patches, train_lib

    data = synthetic.noisy_pairs(24, 32, 0.5, seed=0, num_splits=k)
    test = synthetic.noisy_pairs(8, 32, 0.5, seed=100, num_splits=k)
    beta_r = 0.5 if kind == "consensus" else 0.0  # the paper's ratio; Eq. 8 alone drifts apart
    method = methods.make(kind, UNetConfig(base_features=8, depth=2), num_splits=k,
                          beta_w=1e-6, beta_r=beta_r)
    opt = train_lib.make_optimizer(3e-3)
    state = train_lib.create_train_state(method, opt, jax.random.PRNGKey(0))
    step = train_lib.make_train_step(method, opt)
    images = {key: jnp.asarray(data[key]) for key in method.input_keys()}
    key = jax.random.PRNGKey(1)
    for i in range(300):
        kb, ks = jax.random.split(jax.random.fold_in(key, i))
        idx = jax.random.randint(kb, (16,), 0, 24)
        batch = patches.random_patch_batch(ks, images, idx, 32, augment=True)
        state, _ = step(state, batch, ks)
    z = np.asarray(method.denoise(state.params, *[jnp.asarray(test[n])
                                                  for n in method.export_inputs]))
    mse = np.mean((z - test["x_ref"]) ** 2)
    # Below a quarter of the noise of one split and of all of the measurement (x_est).
    assert mse < 0.25 * np.mean((test["x1"] - test["x_ref"]) ** 2), (kind, k, mse)
    assert mse < 0.5 * np.mean((test["x_est"] - test["x_ref"]) ** 2), (kind, k, mse)
    terms, zv = jax.jit(method.validation_terms)(state.params, {n: jnp.asarray(v)
                                                                for n, v in test.items()})
    np.testing.assert_allclose(np.asarray(zv), z, rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(terms["loss"]))
    assert len(method.columns) == 1 and f"K={k}" in method.columns[0]


def test_every_scheme_declares_what_the_others_ask():
    for kind in methods.KINDS:
        extra = {"teacher": "run"} if kind == "distill" else {}
        method = methods.make(kind, MODEL, **extra)
        assert method.kind == kind and method.columns and method.export_inputs
        assert set(method.export_inputs) <= set(method.data_keys()) | {"x_est", "x1"}
        assert method.num_networks >= 1
    with pytest.raises(ValueError, match="loss.kind must be one of"):
        methods.make("noise2void", MODEL)
    with pytest.raises(ValueError, match="num_splits"):
        methods.make("consensus", MODEL, num_splits=1)


def test_no_code_outside_methods_branches_on_a_schemes_name():
    pattern = re.compile(r"(?<!dtype\.)kind (==|!=|in \()")
    offenders = []
    for path in [*(ROOT / "consensus_jax").rglob("*.py"), ROOT / "train.py", ROOT / "evaluate.py"]:
        if "methods" in path.relative_to(ROOT).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "loss.kind" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders
