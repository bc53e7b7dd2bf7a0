"""PyTorch reference of consensus_jax's UNet, the consensus loss (Eq. 12) and its train step.

Bench-only (needs ``pip install torch==2.13.0``, the CPU wheel). The architecture mirrors
``consensus_jax.models.UNet`` layer for layer: two 3x3 convolutions with ReLU per level, 2x2
max-pooling down, a 2x2 stride-2 transposed convolution up, concatenation ``[up, skip]``, a 1x1
head and the global residual. ``load_flax_params`` copies a flax parameter pytree into the torch
module so that the two implementations can be checked to compute the same loss before timing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, features: int):
        super().__init__(
            nn.Conv2d(cin, features, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
        )


class TorchUNet(nn.Module):
    """UNet [B, C, H, W] -> [B, C, H, W] with the same layers as ``consensus_jax.models.UNet``."""

    def __init__(self, base_features: int, depth: int, in_channels: int = 1,
                 out_channels: int = 1, residual: bool = True):
        super().__init__()
        self.depth, self.residual = depth, residual
        feats = [base_features * 2**level for level in range(depth + 1)]
        cin = in_channels
        self.down = nn.ModuleList()
        for level in range(depth):
            self.down.append(_DoubleConv(cin, feats[level]))
            cin = feats[level]
        self.bottom = _DoubleConv(cin, feats[depth])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in range(depth):
            self.up.append(nn.ConvTranspose2d(feats[level + 1], feats[level], 2, stride=2))
            self.dec.append(_DoubleConv(2 * feats[level], feats[level]))
        self.head = nn.Conv2d(feats[0], out_channels, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, skips = x, []
        for level in range(self.depth):
            h = self.down[level](h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottom(h)
        for level in reversed(range(self.depth)):
            h = self.up[level](h)
            h = self.dec[level](torch.cat([h, skips[level]], dim=1))
        out = self.head(h)
        return out + x if self.residual else out


def _sq(v: torch.Tensor) -> torch.Tensor:
    """Batch mean of per-sample squared L2 norms (the convention of consensus_jax.losses)."""
    return v.square().flatten(1).sum(1).mean()


def consensus_total_loss(net1: nn.Module, net2: nn.Module, x1: torch.Tensor, x2: torch.Tensor,
                         x_est: torch.Tensor, beta_w: float, beta_r: float) -> torch.Tensor:
    """Eq. 12: ``Ln + beta_w (||Theta1||^2 + ||Theta2||^2) + beta_r ||(y1 + y2)/2 - x_est||^2``.

    Args:
      x1, x2, x_est: [B, C, H, W] noisy halves and the estimate of Eq. 11.
    """
    y1, y2 = net1(x1), net2(x2)
    ln = 0.5 * _sq(y1 - x2) + 0.5 * _sq(y2 - x1) - 0.25 * _sq(y1 - y2)
    lw = sum(p.square().sum() for p in [*net1.parameters(), *net2.parameters()])
    lr = _sq(0.5 * (y1 + y2) - x_est)
    return ln + beta_w * lw + beta_r * lr


class ConsensusStep:
    """One Adam step on both networks' parameters (one optimizer), the PyTorch twin of
    ``consensus_jax.train_lib.make_train_step`` for ``loss.kind='consensus'``."""

    def __init__(self, net1: nn.Module, net2: nn.Module, beta_w: float, beta_r: float,
                 learning_rate: float = 1e-4):
        self.net1, self.net2, self.beta_w, self.beta_r = net1, net2, beta_w, beta_r
        self.opt = torch.optim.Adam([*net1.parameters(), *net2.parameters()], lr=learning_rate)

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor, x_est: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = consensus_total_loss(self.net1, self.net2, x1, x2, x_est, self.beta_w,
                                    self.beta_r)
        loss.backward()
        self.opt.step()
        return loss.detach()


def load_flax_params(net: TorchUNet, params: Mapping[str, Any]) -> None:
    """Copies a ``consensus_jax.models.UNet`` parameter pytree into ``net`` in place.

    Flax convolution kernels are [kh, kw, in, out] and cross-correlate like torch's. Flax's
    ``ConvTranspose`` (``transpose_kernel=False``, 2x2, stride 2) places ``kernel[1 - a, 1 - b]``
    at output offset ``(a, b)`` of each 2x2 block, torch's ``ConvTranspose2d`` places
    ``weight[:, :, a, b]`` there: the kernel is flipped, and torch's weight is [in, out, kh, kw].
    """

    def conv(mod: nn.Conv2d, p: Mapping[str, Any]) -> None:
        mod.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()))
        mod.bias.copy_(torch.from_numpy(np.array(p["bias"])))

    def double(mod: _DoubleConv, p: Mapping[str, Any]) -> None:
        conv(mod[0], p["conv0"])
        conv(mod[2], p["conv1"])

    with torch.no_grad():
        for level in range(net.depth):
            double(net.down[level], params[f"down{level}"])
            double(net.dec[level], params[f"dec{level}"])
            p = params[f"up{level}"]
            net.up[level].weight.copy_(
                torch.from_numpy(np.asarray(p["kernel"])[::-1, ::-1].transpose(2, 3, 0, 1).copy()))
            net.up[level].bias.copy_(torch.from_numpy(np.array(p["bias"])))
        double(net.bottom, params["bottom"])
        conv(net.head, params["head"])
