"""CG-SENSE: ``x_est`` of the paper, the SENSE reconstruction of the undersampled data.

Solves ``(A^H A + lambda I) x = A^H y`` with ``A = M F S`` (coil sensitivities ``S``, centred
orthonormal 2-D FFT ``F``, phase-encode mask ``M``) by conjugate gradients for a fixed number of
iterations (``lax.fori_loop``: jit-compiled, differentiable, batched over leading axes).

Two exact identities make each iteration cheap:

- The mask acts on ky only and commutes with the readout FFT, so ``F^H M F = F_y^H M F_y``: the
  normal operator needs 1-D FFTs along ky only (half the work of 2-D transforms).
- The centring shifts ``F_y = P F P^-1`` (``P`` = fftshift along ky) are folded into the maps, the
  mask and the right-hand side once, so the loop runs un-shifted FFTs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from consensus_jax.mri.fft import fft2c, ifft2c

Array = jax.Array


def _column_mask(mask: Array, dtype: jnp.dtype) -> Array:
    return mask.astype(dtype)[..., None, None, :]


def sense_forward(image: Array, maps: Array, mask: Array) -> Array:
    """``A x``: image complex [..., H, W] -> masked coil k-space [..., C, kx, ky]."""
    k = fft2c(maps * image[..., None, :, :])
    return k * _column_mask(mask, k.real.dtype)


def sense_adjoint(kspace: Array, maps: Array, mask: Array) -> Array:
    """``A^H y``: coil k-space [..., C, kx, ky] -> image complex [..., H, W]."""
    y = kspace * _column_mask(mask, kspace.real.dtype)
    return jnp.sum(jnp.conj(maps) * ifft2c(y), axis=-3)


def _dot(a: Array, b: Array) -> Array:
    """Real part of <a, b> per slice, [..., 1, 1]."""
    return jnp.sum((jnp.conj(a) * b).real, axis=(-2, -1), keepdims=True)


def _ratio(num: Array, den: Array) -> Array:
    """num / den, 0 where den == 0 (CG has converged exactly; avoids 0/0 under jit)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@partial(jax.jit, static_argnames=("num_iters",))
def cg_sense(kspace: Array, maps: Array, mask: Array, lam: float = 0.0,
             num_iters: int = 30) -> Array:
    """CG-SENSE reconstruction, batched over leading axes.

    Args:
      kspace: complex [..., C, kx, ky] measured k-space (unsampled columns are zeroed here).
      maps: complex [..., C, H, W] coil sensitivities (e.g. ``coils.estimate_sensitivity_maps``).
      mask: bool or 0/1 [..., W] phase-encode mask.
      lam: Tikhonov weight lambda >= 0, relative to A^H A (whose norm is <= 1 for maps with
        ``sum_c |S_c|^2 <= 1``).
      num_iters: CG iterations, fixed (paper-size benchmark: 30).

    Returns:
      complex [..., H, W], starting from x = 0.
    """
    cdtype = kspace.dtype
    rdtype = kspace.real.dtype
    # Work in the ifftshift-ed ky frame (see module docstring): z = P^-1 x.
    maps_s = jnp.fft.ifftshift(maps.astype(cdtype), axes=-1)
    mask_s = jnp.fft.ifftshift(mask.astype(rdtype), axes=-1)[..., None, None, :]
    b = jnp.fft.ifftshift(sense_adjoint(kspace, maps.astype(cdtype), mask), axes=-1)
    lam = jnp.asarray(lam, rdtype)

    def normal(z: Array) -> Array:
        coil = jnp.fft.fft(maps_s * z[..., None, :, :], axis=-1)
        coil = jnp.fft.ifft(coil * mask_s, axis=-1)
        return jnp.sum(jnp.conj(maps_s) * coil, axis=-3) + lam * z

    def body(_, carry):
        z, r, p, rs = carry
        ap = normal(p)
        alpha = _ratio(rs, _dot(p, ap))
        z = z + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r)
        p = r + _ratio(rs_new, rs) * p
        return z, r, p, rs_new

    z0 = jnp.zeros_like(b)
    z, *_ = jax.lax.fori_loop(0, num_iters, body, (z0, b, b, _dot(b, b)))
    return jnp.fft.fftshift(z, axes=-1)
