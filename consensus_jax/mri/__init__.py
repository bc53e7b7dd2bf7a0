"""MRI physics in JAX for the consensus network's NYU knee experiment (paper, Sec. 3.1).

Array convention: ``[..., coils, H, W]`` with H the readout (kx) axis and W the phase-encode
(ky) axis; masks are ``[..., W]``. Modules: ``fft`` (centred orthonormal FFTs), ``masks``
(random Cartesian masks), ``split`` (the consensus split into two zero-mean halves), ``coils``
(ACS sensitivity maps, coil combination), ``sense`` (CG-SENSE), ``pipeline`` (k-space -> x1, x2,
x_est, references), ``simulate`` (built-in multi-coil data from images), ``fastmri`` (the NYU
knee HDF5 reader), ``diagnostics`` (split checks). The built-in images are in
``consensus_jax.phantoms`` (``knee``, ``mni``).
"""

from consensus_jax.mri.coils import coil_combine, estimate_sensitivity_maps
from consensus_jax.mri.fft import fft2c, fftc, ifft2c, ifftc
from consensus_jax.mri.masks import Undersampling, sample_mask, sample_masks
from consensus_jax.mri.pipeline import ConsensusMRIConfig, consensus_inputs
from consensus_jax.mri.sense import cg_sense
from consensus_jax.mri.split import split_kspace, split_mask

__all__ = [
    "ConsensusMRIConfig",
    "Undersampling",
    "cg_sense",
    "coil_combine",
    "consensus_inputs",
    "estimate_sensitivity_maps",
    "fft2c",
    "fftc",
    "ifft2c",
    "ifftc",
    "sample_mask",
    "sample_masks",
    "split_kspace",
    "split_mask",
]
