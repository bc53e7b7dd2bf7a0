"""bench.bench_conv_layers: the layer walk matches the UNet and the timed calls compute the
convolution and its two gradients (checked against explicit numpy sums)."""

import numpy as np
import pytest

from bench.bench_conv_layers import ConvLayer, conv_layers, jax_parts
from bench.bench_train_step import unet_forward_macs
from consensus_jax.models import UNetConfig


@pytest.mark.parametrize("base,depth,px,batch", [(16, 3, 64, 16), (32, 4, 96, 40), (8, 2, 32, 2)])
def test_conv_layers_cover_the_unets_3x3_macs(base, depth, px, batch):
    model = UNetConfig(base_features=base, depth=depth)
    layers = conv_layers(model, batch, px)
    assert len(layers) == 4 * depth + 2
    assert [layer.needs_dx for layer in layers].count(False) == 1 and not layers[0].needs_dx
    conv3x3 = sum(layer.batch * layer.px**2 * 9 * layer.cin * layer.cout for layer in layers)
    # Everything else unet_forward_macs counts: the 2x2 up-convolutions and the 1x1 head.
    up = sum(batch * (px >> level) ** 2 * 2 * base * 2**level * base * 2**level
             for level in range(depth))
    head = batch * px**2 * base * model.out_channels
    assert conv3x3 + up + head == unet_forward_macs(model, batch, px, px)


def test_jax_parts_compute_forward_and_both_gradients():
    layer = ConvLayer(batch=2, px=6, cin=3, cout=4, needs_dx=True)
    _, outs = jax_parts(layer, {})
    x, k, g = (a.astype(np.float64) for a in outs["inputs"])
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((2, 6, 6, 4))
    dk = np.zeros((3, 3, 3, 4))
    dxp = np.zeros_like(xp)
    for a in range(3):
        for b in range(3):
            win = xp[:, a:a + 6, b:b + 6, :]
            y += win @ k[a, b]
            dk[a, b] = np.einsum("nhwc,nhwf->cf", win, g)
            dxp[:, a:a + 6, b:b + 6, :] += g @ k[a, b].T
    np.testing.assert_allclose(outs["fwd"], y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["dk"], dk, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(outs["dx"], dxp[:, 1:-1, 1:-1, :], rtol=1e-5, atol=1e-5)
