"""Noise2noise (Eq. 2): one network from one half reconstruction to the other."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from consensus_jax import losses
from consensus_jax.methods.base import Array, Batch, Method, Terms, clean_error, register
from consensus_jax.methods.noise2clean import IMAGE_NAMES


@register
@dataclasses.dataclass(frozen=True)
class Noise2Noise(Method):
    """``f(x1) -> x2``. Two table columns: the network on ``x1`` (the paper's Noise2noise) and
    on both halves averaged, ``(f(x1) + f(x2)) / 2``. Validation on held-out slices: Eq. 2 in
    both directions, ``(||f(x1) - x2||^2 + ||f(x2) - x1||^2) / 2``; ``disagreement`` =
    ``||f(x1) - f(x2)||^2``. An exported model takes one half reconstruction, as evaluation
    feeds it."""

    kind = "noise2noise"
    columns = ("Noise2noise", "Noise2noise (both halves)")

    def input_keys(self) -> tuple[str, ...]:
        return ("x1", "x2")

    def data_loss(self, params: dict[str, Any], batch: Batch) -> tuple[Array, Terms]:
        (y,) = self.apply(params, [batch["x1"]])
        loss, terms = losses.noise2noise(y, batch["x2"])
        return loss, terms

    def validation_terms(self, params: dict[str, Any], batch: Batch) -> tuple[Terms, Array]:
        y1, y2 = (self.denoise(params, batch[k]) for k in ("x1", "x2"))
        loss = 0.5 * (losses.noise2noise(y1, batch["x2"])[0]
                      + losses.noise2noise(y2, batch["x1"])[0])
        z = losses.consensus_average(y1, y2)
        return {"loss": loss, "disagreement": jnp.mean(losses.squared_norm(y1 - y2)),
                **clean_error(z, batch)}, z

    def predict(self, params: dict[str, Any], images: Batch) -> dict[str, Array]:
        y1, y2 = (self.denoise(params, images[k]) for k in ("x1", "x2"))
        return {self.columns[0]: y1, self.columns[1]: losses.consensus_average(y1, y2)}

    @property
    def export_inputs(self) -> tuple[str, ...]:
        return ("x1",)

    def denoise(self, params: dict[str, Any], *images: Array) -> Array:
        (x,) = images
        return self.apply_whole(self.split_params(params)[0], x)

    def describe_inputs(self, modality: str) -> str:
        return IMAGE_NAMES[modality]["x1"]
