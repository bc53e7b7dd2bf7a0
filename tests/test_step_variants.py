"""Implementation variants compute the same function: the UNet layers (UNetConfig.layer_impl) and
the per-platform XLA compile options of the train step (consensus_jax.xla_options).

References: flax's own ``ConvTranspose`` / ``max_pool`` (the ``"xla"`` variant) and explicit
numpy loops over the definition of a 2x2 stride-2 transposed convolution and of 2x2 max-pooling.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax import methods, train_lib, xla_options
from consensus_jax.models import (
    LAYER_IMPLS,
    UNet,
    UNetConfig,
    _max_pool_2x2,
    _UpConvGemm,
    init_params,
    resolve_layer_impl,
)

CONCRETE = ("xla", "reshape")


def _upconv_loop(x, kernel, bias):
    # Definition: every input pixel (i, j) spreads x[i, j] @ W over its 2x2 output block; flax
    # (transpose_kernel=False) uses the spatially flipped kernel, W[a, b] = kernel[1 - a, 1 - b].
    b, h, w, _ = x.shape
    out = np.zeros((b, 2 * h, 2 * w, kernel.shape[-1]))
    for i in range(h):
        for j in range(w):
            for a in range(2):
                for c in range(2):
                    out[:, 2 * i + a, 2 * j + c] = x[:, i, j] @ kernel[1 - a, 1 - c]
    return out + bias


def test_upconv_gemm_matches_definition_and_flax():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    kernel = rng.normal(size=(2, 2, 4, 6)).astype(np.float32)
    bias = rng.normal(size=(6,)).astype(np.float32)
    params = {"params": {"kernel": kernel, "bias": bias}}
    ours = _UpConvGemm(6, jnp.float32).apply(params, x)
    flax_out = nn.ConvTranspose(6, (2, 2), strides=(2, 2)).apply(params, x)
    np.testing.assert_allclose(ours, _upconv_loop(x, kernel, bias), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flax_out, _upconv_loop(x, kernel, bias), rtol=1e-5, atol=1e-5)


def test_max_pool_matches_definition():
    x = np.random.default_rng(1).normal(size=(2, 6, 4, 3)).astype(np.float32)
    ref = np.stack([x[:, a::2, c::2] for a in range(2) for c in range(2)]).max(axis=0)
    np.testing.assert_array_equal(_max_pool_2x2(jnp.asarray(x)), ref)


def test_resolve_layer_impl():
    assert resolve_layer_impl("auto", "cpu") == "reshape"
    assert resolve_layer_impl("auto", "gpu") == "xla"
    assert resolve_layer_impl("auto", "tpu") == "xla"
    for impl in CONCRETE:
        assert resolve_layer_impl(impl, "gpu") == impl
    assert set(CONCRETE) < set(LAYER_IMPLS)
    with pytest.raises(ValueError, match="layer_impl"):
        UNetConfig(layer_impl="winograd")


def test_variants_share_parameters():
    inits = [init_params(UNetConfig(4, 2, layer_impl=impl), jax.random.PRNGKey(0))
             for impl in CONCRETE]
    assert jax.tree_util.tree_structure(inits[0]) == jax.tree_util.tree_structure(inits[1])
    for a, b in zip(jax.tree_util.tree_leaves(inits[0]), jax.tree_util.tree_leaves(inits[1]),
                    strict=True):
        np.testing.assert_array_equal(a, b)


# Depth 1 keeps the two compilations short; it still chains conv -> pool -> conv -> up-conv.
MODEL = UNetConfig(4, 1)


def _loss_and_grads(impl, params, batch):
    method = methods.make("consensus", UNetConfig(4, 1, layer_impl=impl), beta_w=1e-3,
                              beta_r=0.5)
    return jax.jit(jax.value_and_grad(lambda p: method.loss(p, batch),
                                      has_aux=True))(params)


def test_consensus_loss_and_gradients_agree_across_variants():
    method = methods.make("consensus", MODEL, beta_w=1e-3, beta_r=0.5)
    params = method.init_params(jax.random.PRNGKey(0))
    # Non-zero biases so that every parameter's gradient path is exercised.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    rng = np.random.default_rng(2)
    batch = {k: jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32)
             for k in ("x1", "x2", "x_est")}
    (l_ref, t_ref), g_ref = _loss_and_grads("xla", params, batch)
    (l_new, t_new), g_new = _loss_and_grads("reshape", params, batch)
    np.testing.assert_allclose(l_new, l_ref, rtol=1e-5)
    for name in t_ref:
        np.testing.assert_allclose(t_new[name], t_ref[name], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_new),
                    strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))))


def test_bfloat16_variants_agree_to_bfloat16_precision():
    params = init_params(UNetConfig(4, 2), jax.random.PRNGKey(3))
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 16, 16, 1))
    outs = [UNet(UNetConfig(4, 2, dtype="bfloat16", layer_impl=impl)).apply({"params": params}, x)
            for impl in CONCRETE]
    assert outs[0].dtype == outs[1].dtype == jnp.float32
    np.testing.assert_allclose(outs[1], outs[0], atol=0.02 * float(jnp.max(jnp.abs(outs[0]))))


def test_default_compiler_options_per_platform():
    assert xla_options.default_compiler_options("gpu") == {}
    assert xla_options.default_compiler_options("tpu") == {}
    # The installed jaxlib accepts the CPU options; should a new one refuse them, this fails so
    # that the lost CPU speed (bench/PERF_LOG.md) is noticed rather than silently accepted.
    assert xla_options.default_compiler_options("cpu") == dict(xla_options.CPU_COMPILER_OPTIONS)
    assert not xla_options._accepted((("xla_cpu_no_such_option", "1"),))


def test_train_step_with_and_without_cpu_compiler_options():
    method = methods.make("consensus", MODEL, beta_w=1e-3, beta_r=0.5)
    opt = train_lib.make_optimizer(1e-2)
    rng = np.random.default_rng(5)
    batch = {k: jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32)
             for k in ("x1", "x2", "x_est")}
    results = []
    for options in (dict(xla_options.CPU_COMPILER_OPTIONS), {}):
        state = train_lib.create_train_state(method, opt, jax.random.PRNGKey(0))
        step = train_lib.make_train_step(method, opt, compiler_options=options)
        for _ in range(2):
            state, metrics = step(state, batch, None)
        results.append((jax.tree_util.tree_leaves(state.params), metrics))
    (p_opt, m_opt), (p_ref, m_ref) = results
    for name in m_ref:
        np.testing.assert_allclose(m_opt[name], m_ref[name], rtol=1e-5)
    for a, b in zip(p_ref, p_opt, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
