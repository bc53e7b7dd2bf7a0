"""Noise2Inverse (Hendriksen, Pelt & Batenburg, IEEE Trans. Comput. Imaging 6, 2020) as a
baseline: one network trained on every "K - 1 splits -> the remaining one" of a slice."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from consensus_jax import losses
from consensus_jax.methods.base import (
    Array,
    Batch,
    Method,
    Terms,
    clean_error,
    register,
    split_keys,
)


def noise2inverse_loss(ys: list[Array], xs: list[Array]) -> tuple[Array, Terms]:
    """The Noise2Inverse loss for K splits: one network f, for each left-out split j the input is
    the mean of the other K - 1 splits and the target is x_j;
    ``L = 1/N sum_i (1/K) sum_j ||f(mean_{k != j} x_ik) - x_ij||^2``.

    Args:
      ys: the K outputs ``f(mean_{k != j} x_k)``, j = 1..K, each [B, H, W, C].
      xs: the K split reconstructions, each [B, H, W, C].
    """
    loss = sum(jnp.mean(losses.squared_norm(y - x)) for y, x in zip(ys, xs, strict=True)) / len(xs)
    return loss, {"noise2inverse": loss}


@register
@dataclasses.dataclass(frozen=True)
class Noise2Inverse(Method):
    """One network f. For each left-out split j of the K: input ``mean_{k != j} x_k``, target
    ``x_j``; the loss averages the K choices (``noise2inverse_loss``) and so does the
    prediction, ``z = (1/K) sum_j f(mean_{k != j} x_k)``. Its targets' noise is independent of
    its inputs, so the same loss on held-out slices is its label-free validation loss."""

    kind = "noise2inverse"

    @property
    def columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"Noise2Inverse (K={self.num_splits})",)

    @property
    def splits(self) -> tuple[str, ...]:
        return split_keys(self.num_splits)

    def input_keys(self) -> tuple[str, ...]:
        return self.splits

    def _inputs(self, xs: list[Array]) -> list[Array]:
        total, k = sum(xs), len(xs)
        return [(total - x) / (k - 1) for x in xs]

    def data_loss(self, params: dict[str, Any], batch: Batch) -> tuple[Array, Terms]:
        xs = [batch[k] for k in self.splits]
        # The K choices as one batch through the one network.
        (y,) = self.apply(params, [jnp.concatenate(self._inputs(xs))])
        return noise2inverse_loss(jnp.split(y, self.num_splits), xs)

    def validation_terms(self, params: dict[str, Any], batch: Batch) -> tuple[Terms, Array]:
        xs = [batch[k] for k in self.splits]
        (p,) = self.split_params(params)
        ys = [self.apply_whole(p, x) for x in self._inputs(xs)]
        loss, _ = noise2inverse_loss(ys, xs)
        z = losses.consensus_mean(ys)
        return {"loss": loss, **clean_error(z, batch)}, z

    @property
    def export_inputs(self) -> tuple[str, ...]:
        return self.splits

    def denoise(self, params: dict[str, Any], *images: Array) -> Array:
        (p,) = self.split_params(params)
        return losses.consensus_mean([self.apply_whole(p, x) for x in self._inputs(list(images))])

    def describe_inputs(self, modality: str) -> str:
        return (f"the {self.num_splits} split reconstructions of each slice (CT: the FBPs of "
                f"views k mod {self.num_splits}; MRI: the zero-filled, amplified line subsets)")
