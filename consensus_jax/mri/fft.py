"""Centred, orthonormal Fourier transforms between coil images and k-space.

Axis convention for the whole ``consensus_jax.mri`` package: images and k-space are
``[..., coils, H, W]`` complex arrays with H the readout (frequency-encode, kx) axis and W the
phase-encode (ky) axis, the axis that Cartesian undersampling removes lines from. The k-space
centre (DC) sits at index ``n // 2`` of each axis, as in fastMRI files.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``: unitary, so ``ifft2c(fft2c(x)) == x``
and ``||fft2c(x)|| == ||x||``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def fftc(x: Array, axes: Sequence[int] = (-2, -1)) -> Array:
    """Centred orthonormal FFT over ``axes`` (image -> k-space), any shape, complex."""
    axes = tuple(axes)
    x = jnp.fft.ifftshift(x, axes=axes)
    x = jnp.fft.fftn(x, axes=axes, norm="ortho")
    return jnp.fft.fftshift(x, axes=axes)


def ifftc(k: Array, axes: Sequence[int] = (-2, -1)) -> Array:
    """Centred orthonormal inverse FFT over ``axes`` (k-space -> image), any shape, complex."""
    axes = tuple(axes)
    k = jnp.fft.ifftshift(k, axes=axes)
    k = jnp.fft.ifftn(k, axes=axes, norm="ortho")
    return jnp.fft.fftshift(k, axes=axes)


def fft2c(image: Array) -> Array:
    """Coil images [..., C, H, W] -> k-space [..., C, kx, ky] (centred, orthonormal)."""
    return fftc(image, axes=(-2, -1))


def ifft2c(kspace: Array) -> Array:
    """k-space [..., C, kx, ky] -> coil images [..., C, H, W] (centred, orthonormal)."""
    return ifftc(kspace, axes=(-2, -1))
