"""Ablation grid settings: dotted config overrides on a copy of the base config."""

import ml_collections
import pytest

from consensus_jax.ablation import apply_overrides


def _base(locked):
    config = ml_collections.ConfigDict({"seed": 0, "loss": {"kind": "consensus", "beta_r": 0.5}})
    if locked:
        config.lock()
    return config


@pytest.mark.parametrize("locked", [False, True])
def test_overrides_change_a_copy_and_keep_its_lock(locked):
    base = _base(locked)
    config = apply_overrides(base, {"loss.beta_r": 0.0, "loss.kind": "noise2noise", "seed": 2})
    assert (config.loss.beta_r, config.loss.kind, config.seed) == (0.0, "noise2noise", 2)
    assert (base.loss.beta_r, base.loss.kind, base.seed) == (0.5, "consensus", 0)
    assert config.is_locked == locked


@pytest.mark.parametrize("key", ["loss.beta", "los.beta_r", "seeds", "seed.x"])
def test_unknown_keys_are_refused_by_name(key):
    with pytest.raises(ValueError, match=f"Ablation override '{key}': no such config key"):
        apply_overrides(_base(False), {key: 1.0})
