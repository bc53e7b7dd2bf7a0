"""The training schemes, one module each, registered under their ``loss.kind``.

  noise2clean    Eq. 1, one network to the reference (upper baseline)
  noise2noise    Eq. 2, one network from one half to the other
  consensus      Eqs. 7-12, K networks on K splits (the paper's pair for K = 2)
  distill        one network to a trained consensus run's output (the paper's Discussion)
  noise2inverse  one network, every "K - 1 splits -> the remaining one" (Hendriksen et al. 2020)

A new scheme is one module here (a ``Method`` subclass with ``@register``, imported below) and
a config; ``base.Method`` lists what it declares.
"""

from __future__ import annotations

from typing import Any

from consensus_jax.errors import ConfigError
from consensus_jax.methods import consensus, distill, noise2clean, noise2inverse, noise2noise
from consensus_jax.methods.base import REGISTRY, Method, split_keys
from consensus_jax.methods.distill import TEACHER_KEY
from consensus_jax.models import UNetConfig

__all__ = ["KINDS", "REGISTRY", "TEACHER_KEY", "Method", "from_config", "make", "split_keys"]
del consensus, distill, noise2clean, noise2inverse, noise2noise  # registered on import

#: Every ``loss.kind``: the paper's first, then the others in the order they were added.
_PAPER = ("noise2clean", "noise2noise", "consensus")
KINDS = (*_PAPER, *(k for k in REGISTRY if k not in _PAPER))


def make(kind: str, *args: Any, **fields: Any) -> Method:
    """The scheme ``kind`` with the fields of ``Method`` (``model``, the param layout and the
    loss settings, in that order, or by name)."""
    if kind not in REGISTRY:
        raise ConfigError(f"loss.kind must be one of {KINDS}, got {kind!r}.")
    return REGISTRY[kind](*args, **fields)


def from_config(config: Any) -> Method:
    """The scheme of an experiment config (its ``model``, ``loss`` and ``data`` groups)."""
    model = dict(config.model)
    layout = model.pop("param_layout", "separate")
    return make(config.loss.kind,
                model=UNetConfig.from_mapping(model),
                param_layout=layout,
                beta_w=float(config.loss.beta_w),
                beta_r=float(config.loss.beta_r),
                noise2clean_input=config.loss.get("noise2clean_input", "x_est"),
                distill_input=config.loss.get("distill_input", "x_est"),
                teacher=str(config.loss.get("teacher", "") or ""),
                num_splits=int(config.data.get("num_splits", 2)))
