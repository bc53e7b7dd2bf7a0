"""The notebook API (docs/usage.md):

    import numpy as np
    from consensus_jax.api import load_model, score

    model = load_model("work_dirs/ct_quick/distill")       # a training workdir or exported folder
    denoised_hu = model.denoise(np.load("low_dose_hu.npy"))  # [S, H, W] in HU (CT)
    print(score(denoised_hu, np.load("full_dose_hu.npy")))   # per-slice RMSE (HU) and SSIM
"""

from __future__ import annotations

from typing import Any

import numpy as np

from consensus_jax import export, metrics
from consensus_jax.errors import ConfigError, InputError

__all__ = ["load_model", "score"]


def load_model(path: Any, checkpoint: str | int = "best") -> Any:
    """A denoiser (``consensus_jax.artifact.Model``) from an exported folder, or from a training
    workdir (its ``checkpoint``: "best", "latest" or a step)."""
    return export.load(path, checkpoint)


def score(denoised: Any, reference: Any, modality: str = "ct") -> dict[str, Any]:
    """The paper's table metrics per slice, as numpy arrays.

    CT: images [S, H, W] in HU -> ``rmse_hu`` and ``ssim`` (x100, liver window). MRI: normalised
    (real, imaginary) images [S, H, W, 2] -> ``rmse_1e3`` and ``ssim`` (x100, magnitude).
    """
    x, ref = np.asarray(denoised, np.float32), np.asarray(reference, np.float32)
    if x.shape != ref.shape:
        raise InputError(f"denoised {x.shape} and reference {ref.shape} differ in shape.")
    if modality == "ct":
        x, ref = (x[None], ref[None]) if x.ndim == 2 else (x, ref)
        values = metrics.ct_metrics(x, ref)
    elif modality == "mri":
        values = metrics.mri_metrics(x, ref)
    else:
        raise ConfigError(f"modality must be 'ct' or 'mri', got {modality!r}.")
    return {k: np.asarray(v) for k, v in values.items()}
