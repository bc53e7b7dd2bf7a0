"""Noise2clean (Eq. 1): one network from a noisy image to the reference, the paper's upper
baseline (it needs clean-ish targets, which the other schemes do without)."""

from __future__ import annotations

import dataclasses
from typing import Any

from consensus_jax import losses
from consensus_jax.methods.base import Array, Batch, Method, Terms, clean_error, register

#: What each single image means, for an exported model's manifest.
IMAGE_NAMES = {"ct": {"x_est": "the low-dose FBP of all views", "x_full": "a full-dose FBP",
                      "x1": "one half reconstruction (the FBP of the odd views)"},
               "mri": {"x_est": "the SENSE reconstruction", "x_zf": "the zero-filled image",
                       "x1": "one zero-filled, amplified half of the sampled lines"}}


@register
@dataclasses.dataclass(frozen=True)
class Noise2Clean(Method):
    """``f(x_in) -> x_ref`` with ``x_in = loss.noise2clean_input`` (CT: the quarter-dose FBP of
    all views; MRI: SENSE) and ``x_ref`` the reference (CT: full-dose FBP; MRI: fully sampled).
    Validation: the same squared error on held-out slices."""

    kind = "noise2clean"
    columns = ("Noise2clean",)

    @property
    def image_input(self) -> str:
        """The image the network reads."""
        return self.noise2clean_input

    @property
    def target_key(self) -> str:
        return "x_ref"

    def input_keys(self) -> tuple[str, ...]:
        return (self.image_input, self.target_key)

    def data_loss(self, params: dict[str, Any], batch: Batch) -> tuple[Array, Terms]:
        (y,) = self.apply(params, [batch[self.image_input]])
        loss, _ = losses.noise2clean(y, batch[self.target_key])
        return loss, {self.kind: loss}

    def validation_terms(self, params: dict[str, Any], batch: Batch) -> tuple[Terms, Array]:
        z = self.denoise(params, batch[self.image_input])
        loss, _ = losses.noise2clean(z, batch[self.target_key])
        return {"loss": loss, **clean_error(z, batch)}, z

    @property
    def export_inputs(self) -> tuple[str, ...]:
        return (self.image_input,)

    def denoise(self, params: dict[str, Any], *images: Array) -> Array:
        (x,) = images
        return self.apply_whole(self.split_params(params)[0], x)

    def describe_inputs(self, modality: str) -> str:
        return IMAGE_NAMES[modality].get(self.image_input, self.image_input)
