"""The k-space validation criterion on measured lines that no network sees (docs/validation.md).

On a validation slice a few measured outer ky lines are kept out of both halves, ``x_est`` and
``x_zf`` (``masks.sample_mask_with_holdout``); the dataset stores their multi-coil k-space and the
coil maps (``features.MRI_HELDOUT_KEYS``). A prediction ``z`` of the image is mapped through the
same forward model as the simulation and SENSE, ``A z = fft2c(S z)`` (``S`` the stored maps), onto
those lines and compared with the measurement there. Every stored quantity is divided by the
slice's ``scale`` like the images, so ``z`` and the k-space share units.

Its expectation is the clean k-space error on the held-out lines plus the noise variance per
k-space sample, a constant: the noise on those lines is independent of both inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from consensus_jax.mri.fft import fft2c

Array = jax.Array


def _complex(x: Array) -> Array:
    return jax.lax.complex(x[..., 0].astype(jnp.float32), x[..., 1].astype(jnp.float32))


def heldout_kspace_error(z: Array, maps: Array, lines: Array, kspace: Array,
                         valid: Array) -> Array:
    """Mean squared error per slice between ``A z`` and the measured k-space on the held-out lines.

    Args:
      z: float32 [B, H, W, 2], predicted images (real, imaginary), the dataset's units.
      maps: float32 [B, C, H, W, 2], the coil maps the slice's images were combined with.
      lines: int32 [B, L], held-out ky columns (padding: any column, with ``valid`` 0).
      kspace: float32 [B, C, H, L, 2], the measured k-space on those lines / scale.
      valid: float32 [B, C, L], 1 for a measured (coil, line), 0 for padding.

    Returns:
      float32 [B]: ``sum |(A z)[c, kx, l] - y[c, kx, l]|^2 / (H * sum valid)`` over the measured
      (coil, kx, line) samples, per slice (complex samples; real and imaginary errors add).
    """
    coil_kspace = fft2c(_complex(maps) * _complex(z)[:, None])  # [B, C, kx, ky]
    index = jnp.broadcast_to(lines[:, None, None, :],
                             (*coil_kspace.shape[:3], lines.shape[-1]))
    predicted = jnp.take_along_axis(coil_kspace, index, axis=-1)  # [B, C, kx, L]
    squared = jnp.abs(predicted - _complex(kspace)) ** 2 * valid[:, :, None, :]
    count = z.shape[1] * jnp.sum(valid, axis=(1, 2))
    return jnp.sum(squared, axis=(1, 2, 3)) / jnp.maximum(count, 1.0)
