"""Noise calibration of the simulated MRI acquisition: how the baselines depend on the noise.

At a fixed mask, the zero-filled image is linear in k-space, so its error against the noiseless
image splits exactly into an aliasing-only part (zero-filling of the noiseless k-space) and a
noise-only part (zero-filling of the noise); the noise-only part's mean square scales as the noise
variance. SENSE removes most of the aliasing but amplifies the noise (the g-factor), so as the
noise grows SENSE loses its lead over zero-filling. On the paper's real knees at 4x SENSE is the
worse of the two (Table 2: RMSE 38.4 vs 36.3 x 1e-3, SSIM 86.5 vs 90.1); ``baseline_errors`` gives
the figures that place a simulated preset in that regime.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax import metrics
from consensus_jax.mri.coils import coil_combine
from consensus_jax.mri.fft import ifft2c
from consensus_jax.mri.pipeline import ConsensusMRIConfig, as_channels, consensus_inputs
from consensus_jax.mri.sense import cg_sense
from consensus_jax.mri.simulate import CoilSimulation, simulate_kspace

Array = jax.Array

#: Paper Table 2 (4x): SENSE / zero-filling RMSE and both SSIMs.
PAPER_SENSE_TO_ZF_RMSE = 38.4 / 36.3
PAPER_SSIM = {"zero-filling": 90.1, "SENSE": 86.5}


@partial(jax.jit, static_argnames=("coils", "config"))
def baseline_errors(image: Array, key: Array, coils: CoilSimulation,
                    config: ConsensusMRIConfig) -> dict[str, Array]:
    """Zero-filling and SENSE errors of one simulated slice, with the zero-filling error split.

    The same ``key`` gives the same phase, unit noise, mask and split at every ``coils.snr``, so a
    sweep over the SNR changes the noise level alone.

    Args:
      image: magnitude float [H, W].
      key: PRNG key.
      coils: the simulated acquisition (``snr`` must be set).
      config: undersampling and SENSE settings.

    Returns:
      In the dataset's normalised units (x_est in [-1, 1]): ``rmse_1e3`` and ``ssim`` of
      zero-filling (``zf_*``) and SENSE (``sense_*``) against the fully sampled image, the
      complex RMSE x 1e-3 of zero-filling's ``zf_aliasing_1e3`` (noiseless k-space, vs the
      noiseless image) and ``zf_noise_1e3`` (the noise alone), and SENSE's ``sense_noise_1e3``
      (SENSE of the noisy minus SENSE of the noiseless k-space) and ``g_factor``: that noise's
      RMS over the coil-map support divided by the RMS of an ideal unaliased reconstruction of
      the sampled lines' noise, ``sigma * sqrt(W / num_sampled)`` (1: no amplification), and
      ``noise_amplification``: the same RMS divided by ``sigma``, the noise of the fully sampled
      image (the g-factor times the sqrt(R) that any undersampling costs);
      ``half_rmse_1e3``: one amplified half against the fully sampled image; ``scale``: the
      slice's normalisation (multiply a normalised figure by it for k-space units).
    """
    if coils.snr is None:
        raise ValueError("baseline_errors needs a noise level: CoilSimulation(snr=...).")
    k_sim, k_recon = jax.random.split(key)
    noisy, clean, _ = simulate_kspace(image, k_sim, coils)
    out = consensus_inputs(noisy, k_recon, config, kspace_clean=clean, return_maps=True)
    mask, maps, scale = out["mask"].astype(bool), out["maps"], out["scale"]
    column = mask.astype(clean.dtype)[None, None, :]
    zf_clean = as_channels(coil_combine(ifft2c(clean * column), maps) / scale)
    sense_clean = as_channels(cg_sense(clean, maps, mask, config.sense_lambda,
                                       config.sense_iterations) / scale)
    support = out["support"].astype(bool)
    sigma = jnp.max(jnp.abs(image)) / coils.snr / scale
    ideal = sigma * jnp.sqrt(mask.shape[-1] / jnp.sum(mask))
    sense_noise = out["x_est"] - sense_clean
    sense_noise_rms = jnp.sqrt(jnp.sum(jnp.where(support[..., None], sense_noise**2, 0.0))
                               / jnp.sum(support))

    def rmse(x: Array, ref: Array) -> Array:
        return 1e3 * metrics.complex_rmse(x[None], ref[None])[0]

    zf = metrics.mri_metrics(out["x_zf"][None], out["x_ref"][None])
    sense = metrics.mri_metrics(out["x_est"][None], out["x_ref"][None])
    return {
        "zf_rmse_1e3": zf["rmse_1e3"][0], "zf_ssim": zf["ssim"][0],
        "sense_rmse_1e3": sense["rmse_1e3"][0], "sense_ssim": sense["ssim"][0],
        "zf_aliasing_1e3": rmse(zf_clean, out["x_clean"]),
        "zf_noise_1e3": rmse(out["x_zf"], zf_clean),
        "sense_noise_1e3": rmse(out["x_est"], sense_clean),
        "g_factor": sense_noise_rms / ideal,
        "noise_amplification": sense_noise_rms / sigma,
        "half_rmse_1e3": rmse(out["x1"], out["x_ref"]),
        "scale": scale,
    }


def interpolate_snr(snrs: np.ndarray, ratio: np.ndarray,
                    target: float = PAPER_SENSE_TO_ZF_RMSE) -> float | None:
    """The SNR at which the SENSE / zero-filling RMSE ratio crosses ``target``, interpolated
    linearly in log SNR between the two bracketing sweep points; None if the sweep does not
    bracket it."""
    order = np.argsort(snrs)
    s, r = np.log(np.asarray(snrs, np.float64)[order]), np.asarray(ratio, np.float64)[order]
    for i in range(len(s) - 1):
        lo, hi = sorted((r[i], r[i + 1]))
        if lo <= target <= hi and r[i] != r[i + 1]:
            t = (target - r[i]) / (r[i + 1] - r[i])
            return float(np.exp(s[i] + t * (s[i + 1] - s[i])))
    return None
