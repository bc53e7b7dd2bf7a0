"""consensus-jax: medical image denoisers learned from noisy data only (Wu et al. 2019).

The notebook API (docs/usage.md), imported on first use so that ``import consensus_jax`` is light:

    import consensus_jax as cj
    model = cj.load_model("work_dirs/ct_quick/distill")  # a training workdir or exported folder
    denoised = model.denoise(low_dose_hu)                  # [S, H, W] in HU (CT)
    print(cj.score(denoised, full_dose_hu))                # per-slice RMSE (HU) and SSIM
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model", "score"]


def load_model(path: Any, checkpoint: str | int = "best") -> Any:
    """A denoiser (``consensus_jax.artifact.Model``) from an exported folder, or from a training
    workdir (its ``checkpoint``: "best", "latest" or a step)."""
    from consensus_jax import export  # noqa: PLC0415

    return export.load(path, checkpoint)


def score(denoised: Any, reference: Any, modality: str = "ct") -> dict[str, Any]:
    """The paper's table metrics per slice, as numpy arrays.

    CT: images [S, H, W] in HU -> ``rmse_hu`` and ``ssim`` (x100, liver window). MRI: normalised
    (real, imaginary) images [S, H, W, 2] -> ``rmse_1e3`` and ``ssim`` (x100, magnitude).
    """
    import numpy as np  # noqa: PLC0415

    from consensus_jax import metrics  # noqa: PLC0415

    x, ref = np.asarray(denoised, np.float32), np.asarray(reference, np.float32)
    if x.shape != ref.shape:
        raise ValueError(f"denoised {x.shape} and reference {ref.shape} differ in shape.")
    if modality == "ct":
        x, ref = (x[None], ref[None]) if x.ndim == 2 else (x, ref)
        values = metrics.ct_metrics(x, ref)
    elif modality == "mri":
        values = metrics.mri_metrics(x, ref)
    else:
        raise ValueError(f"modality must be 'ct' or 'mri', got {modality!r}.")
    return {k: np.asarray(v) for k, v in values.items()}
