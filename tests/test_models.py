import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.models import UNet, UNetConfig, apply_padded, init_params


def _count_params(cfg: UNetConfig) -> int:
    # Independent count of the FBPConvNet-style UNet: 3x3 convs, 2x2 transposed convs, 1x1 head.
    conv = lambda cin, cout, k: k * k * cin * cout + cout
    n, cin = 0, cfg.in_channels
    for level in range(cfg.depth + 1):
        f = cfg.base_features * 2**level
        n += conv(cin, f, 3) + conv(f, f, 3)
        cin = f
    for level in reversed(range(cfg.depth)):
        f = cfg.base_features * 2**level
        n += conv(cin, f, 2)  # up-convolution
        n += conv(2 * f, f, 3) + conv(f, f, 3)
        cin = f
    return n + conv(cin, cfg.out_channels, 1)


@pytest.mark.parametrize("cfg", [UNetConfig(8, 2, 1, 1), UNetConfig(16, 3, 2, 2),
                                 UNetConfig(8, 2, 2, 1, residual=False)])
def test_architecture_parameter_count(cfg):
    params = init_params(cfg, jax.random.PRNGKey(0))
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == _count_params(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


def test_residual_and_pure_apply():
    cfg = UNetConfig(8, 2)
    model = UNet(cfg)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
    assert set(variables) == {"params"}  # no batch statistics: apply is a pure function
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 1))
    y1 = model.apply(variables, x)
    y2 = model.apply(variables, x)
    np.testing.assert_array_equal(y1, y2)
    zero_head = jax.tree_util.tree_map(jnp.zeros_like, variables["params"]["head"])
    params = {**variables["params"], "head": zero_head}
    np.testing.assert_allclose(model.apply({"params": params}, x), x, atol=0)


def test_bfloat16_compute_keeps_float32_params_and_output():
    cfg32, cfg16 = UNetConfig(8, 2), UNetConfig(8, 2, dtype="bfloat16")
    params = init_params(cfg32, jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 1))
    y32 = UNet(cfg32).apply({"params": params}, x)
    y16 = UNet(cfg16).apply({"params": params}, x)
    assert y16.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(y16 - y32))) < 0.05 * float(jnp.max(jnp.abs(y32))) + 0.05


def test_sizes_and_padding():
    cfg = UNetConfig(8, 2)
    params = init_params(cfg, jax.random.PRNGKey(0))
    model = UNet(cfg)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.apply({"params": params}, jnp.zeros((1, 30, 32, 1)))
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 30, 37, 1))
    y = apply_padded(apply_fn, params, x, cfg.size_multiple)
    assert y.shape == x.shape
    padded = np.pad(np.asarray(x), ((0, 0), (0, 2), (0, 3), (0, 0)), mode="reflect")
    np.testing.assert_allclose(y, apply_fn(params, padded)[:, :30, :37], atol=1e-5)
    x32 = x[:, :28, :36]
    np.testing.assert_array_equal(apply_padded(apply_fn, params, x32, 4), apply_fn(params, x32))


def test_config_validation():
    with pytest.raises(ValueError, match="residual"):
        UNetConfig(8, 2, in_channels=2, out_channels=1)
    with pytest.raises(ValueError, match="dtype"):
        UNetConfig(dtype="float64")
    with pytest.raises(ValueError, match="Unknown model config keys"):
        UNetConfig.from_mapping({"base_features": 8, "levels": 3})
