"""The paper's consensus network (Eqs. 7-12), generalised to K networks on K splits."""

from __future__ import annotations

import dataclasses
from typing import Any

from consensus_jax import losses, uncertainty
from consensus_jax.methods.base import (
    Array,
    Batch,
    Method,
    Terms,
    clean_error,
    register,
    split_keys,
)


@register
@dataclasses.dataclass(frozen=True)
class Consensus(Method):
    """K networks, network k on split k; ``z = mean_k f_k(x_k)`` (Eq. 9 for K = 2).

    Training: ``Ln + beta_w Lw + beta_r Lr`` (Eq. 12), with ``Ln`` of Eq. 8 for K = 2 and its
    K-way generalisation otherwise (``losses.consensus_loss_k``), ``Lw`` the weight decay of
    every network (Eq. 10) and ``Lr = ||z - x_est||^2`` (Eq. 11). Validation on held-out slices:
    ``Ln`` alone, which estimates the clean consensus error (Eq. 7) plus a constant when each
    split's noise is zero-mean given the others (docs/validation.md). Its table column is
    "Proposed" for the paper's pair and "Consensus (K=k)" otherwise.
    """

    kind = "consensus"
    uses_image_consistency = True

    @property
    def columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("Proposed",) if self.num_splits == 2 else (f"Consensus (K={self.num_splits})",)

    @property
    def num_networks(self) -> int:
        return self.num_splits

    @property
    def splits(self) -> tuple[str, ...]:
        return split_keys(self.num_splits)

    def input_keys(self) -> tuple[str, ...]:
        return (*self.splits, "x_est") if self.beta_r else self.splits

    def data_loss(self, params: dict[str, Any], batch: Batch) -> tuple[Array, Terms]:
        xs = [batch[k] for k in self.splits]
        ys = self.apply(params, xs)
        loss, terms = losses.consensus_loss_k(ys, xs)
        if self.beta_r:
            lr, _ = losses.image_consistency(losses.consensus_mean(ys), batch["x_est"])
            loss = loss + self.beta_r * lr
            terms["image_consistency"] = lr
        return loss, terms

    def outputs(self, params: dict[str, Any], images: Batch) -> list[Array]:
        """[f_1(x_1), ..., f_K(x_K)] on whole slices of any size."""
        return [self.apply_whole(p, images[k])
                for p, k in zip(self.split_params(params), self.splits, strict=True)]

    def validation_terms(self, params: dict[str, Any], batch: Batch) -> tuple[Terms, Array]:
        ys = self.outputs(params, batch)
        loss, terms = losses.consensus_loss_k(ys, [batch[k] for k in self.splits])
        z = losses.consensus_mean(ys)
        return {"loss": loss, "disagreement": terms["disagreement"], **clean_error(z, batch)}, z

    @property
    def export_inputs(self) -> tuple[str, ...]:
        return self.splits

    def denoise(self, params: dict[str, Any], *images: Array) -> Array:
        return losses.consensus_mean(self.outputs(params, dict(zip(self.splits, images,
                                                                    strict=True))))

    def spread(self, params: dict[str, Any], *images: Array) -> Array:  # type: ignore[override]
        """The networks' disagreement per pixel [B, H, W, C], an uncertainty map free at
        inference: the standard deviation over k of f_k(x_k) (``uncertainty.network_spread``;
        ``|f1 - f2| / 2`` for the pair)."""
        return self.denoise_and_spread(params, *images)[1]

    def denoise_and_spread(self, params: dict[str, Any], *images: Array) -> tuple[Array, Array]:
        ys = self.outputs(params, dict(zip(self.splits, images, strict=True)))
        return losses.consensus_mean(ys), uncertainty.network_spread(ys)

    def describe_inputs(self, modality: str) -> str:
        if self.num_splits == 2:
            return ("the two half reconstructions of each slice: CT odd- and even-view FBP; MRI "
                    "the two zero-filled, amplified halves of the sampled lines")
        return (f"the {self.num_splits} split reconstructions of each slice: CT the FBPs of "
                f"views k mod {self.num_splits}; MRI the zero-filled, amplified line subsets")
