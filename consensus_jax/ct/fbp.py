"""Filtered backprojection (FBP) with a Hann-apodised ramp filter, parallel and fan beam, in JAX.

Filtering: the band-limited ramp kernel is built in the detector domain (Kak & Slaney, "Principles
of Computerized Tomographic Imaging", eq. 3.61: h(0) = 1 / (4 tau^2), h(n odd) = -1 / (n pi tau)^2),
zero-padded to a power of two >= 2 x detectors (so the circular convolution does not wrap and the
DC term is right), transformed, and multiplied by a Hann window
``0.5 (1 + cos(pi f / (cutoff f_Nyquist)))`` (zero above the cutoff).

Fan beam (full scan, equiangular detector; Kak & Slaney section 3.4.1): projections are
cosine-weighted ``R(gamma) D cos(gamma)``, convolved with
``g(gamma) = (gamma / sin gamma)^2 h(gamma) / 2`` and backprojected pixel by pixel with the weight
``1 / L^2`` (L: source-to-pixel distance). For speed the filtered projection of each view is
resampled onto a fine grid uniform in ``tan(gamma)`` and pre-multiplied by ``cos^2(gamma)``: a
pixel at lateral offset ``u`` and depth ``w`` from the source then needs ``tan(gamma') = u / w``
and ``1 / L^2 = cos^2(gamma') / w^2`` (one division) instead of an arctangent, which XLA evaluates
far more slowly than a division on CPU (see docs/EXPERIMENTS.md).

Backprojection (both geometries) is pixel-driven: for each view, every pixel reads the view's
filtered projection at its detector position from a table oversampled ``fine_oversampling``
times (linear interpolation between channels, then the nearest table sample), one gather per
pixel and view; views run in a ``lax.fori_loop``, chunked so the tables are built once per view,
and views a quarter turn apart share each pixel's position and weight (one gather reads their
four interleaved tables). Alternatives that measured slower on CPU (two gathers with exact
linear interpolation, a polynomial arctangent with channel-uniform tables, cache tiling of the
image): see docs/EXPERIMENTS.md.

Units: sinograms are dimensionless line integrals; images are attenuation in 1/mm.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax.ct.geometry import (
    FanBeamGeometry,
    Geometry,
    ParallelBeamGeometry,
    quarter_turn_groups,
)

FILTER_WINDOWS = ("hann", "ramp")
_VIEW_CHUNK = 32


def fine_oversampling(geometry: Geometry) -> int:
    """Samples per detector channel of the backprojection's lookup tables.

    Backprojection reads each view's filtered projection, linearly interpolated onto a grid
    this many times finer than the channels, at the sample nearest to each pixel: one gather per
    pixel and view instead of the two of direct linear interpolation (gathers dominate the cost on
    CPU). The position is then rounded to 1 / (2 x oversampling) channel, which changes white-noise
    images by ~1.3% RMS at 32x and ~5% at 8x relative to exact linear interpolation. 32x is used
    when the image has at least 8 pixels per table sample (e.g. 512 px), down to 8x for small
    images, where building the tables would otherwise cost more than the backprojection.
    """
    pixels = geometry.image.size_px ** 2
    return int(min(32, max(8, pixels // (8 * geometry.num_detectors))))


def padded_length(num_detectors: int) -> int:
    """FFT length used for filtering: the smallest power of two >= 2 x detectors (at least 64)."""
    return max(64, 1 << math.ceil(math.log2(2 * num_detectors)))


def ramp_kernel(length: int, spacing: float) -> np.ndarray:
    """Band-limited ramp kernel h[n] sampled at ``spacing``, circularly placed, [length].

    ``h[0] = 1 / (4 spacing^2)``, ``h[n odd] = -1 / (pi n spacing)^2``, 0 for even n != 0, with
    indices n >= length / 2 standing for n - length. Units: 1 / spacing^2.
    """
    n = np.arange(length)
    n = np.where(n <= length // 2, n, n - length)
    h = np.zeros(length)
    h[0] = 1.0 / (4.0 * spacing ** 2)
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd] * spacing) ** 2
    return h


def window_response(length: int, window: str = "hann", cutoff: float = 1.0) -> np.ndarray:
    """Apodisation window on the ``np.fft.rfftfreq(length)`` frequencies, [length // 2 + 1].

    Args:
      length: FFT length.
      window: "hann" (``0.5 (1 + cos(pi f / f_c))``) or "ramp" (no apodisation).
      cutoff: f_c as a fraction of the Nyquist frequency, in (0, 1]; the response is 0 above it.
    """
    if window not in FILTER_WINDOWS:
        raise ValueError(f"window={window!r} is not one of {FILTER_WINDOWS}.")
    if not 0 < cutoff <= 1:
        raise ValueError(f"cutoff={cutoff!r} must be in (0, 1] (fraction of Nyquist).")
    rel = np.fft.rfftfreq(length) / (0.5 * cutoff)
    if window == "hann":
        resp = 0.5 * (1.0 + np.cos(np.pi * np.minimum(rel, 1.0)))
    else:
        resp = np.ones_like(rel)
    return np.where(rel <= 1.0, resp, 0.0)


def _filter_spectrum(geometry: Geometry, window: str, cutoff: float) -> np.ndarray:
    """Real frequency response [P // 2 + 1] that includes the convolution's sample spacing."""
    length = padded_length(geometry.num_detectors)
    if isinstance(geometry, ParallelBeamGeometry):
        tau = geometry.detector_spacing_mm
        kernel = tau * ramp_kernel(length, tau)
    else:
        alpha = geometry.fan_angle_spacing_rad
        n = np.arange(length)
        gamma = np.where(n <= length // 2, n, n - length) * alpha
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(gamma == 0, 1.0, gamma / np.sin(gamma))
        kernel = alpha * 0.5 * ratio ** 2 * ramp_kernel(length, alpha)
    return np.real(np.fft.rfft(kernel)) * window_response(length, window, cutoff)


def filter_sinograms(sinograms: jax.Array, geometry: Geometry, window: str = "hann",
                     cutoff: float = 1.0) -> jax.Array:
    """Ramp-filter every projection (fan beam: after the D cos(gamma) pre-weighting).

    Args:
      sinograms: [B, views, detectors] line integrals.
      geometry: scan geometry (static).
      window: "hann" or "ramp".
      cutoff: window cutoff, fraction of Nyquist.

    Returns:
      Filtered projections [B, views, detectors] in 1/mm (parallel) or mm/rad^2 (fan beam).
    """
    n = geometry.num_detectors
    length = padded_length(n)
    if isinstance(geometry, FanBeamGeometry):
        pre = geometry.source_to_isocenter_mm * np.cos(geometry.fan_angles_rad())
        sinograms = sinograms * jnp.asarray(pre, sinograms.dtype)
    spectrum = jnp.asarray(_filter_spectrum(geometry, window, cutoff), jnp.float32)
    freq = jnp.fft.rfft(sinograms, n=length, axis=-1)
    return jnp.fft.irfft(freq * spectrum, n=length, axis=-1)[..., :n].astype(jnp.float32)


def _fine_tables(rows: jax.Array, i0: np.ndarray, frac: np.ndarray,
                 scale: np.ndarray | None) -> jax.Array:
    """Filtered projections [..., n] linearly interpolated onto the fine grid given by
    (i0, frac) [M], times ``scale`` [M], zero-padded at each end -> [..., M + 2]."""
    fine = rows[..., i0] * (1.0 - frac) + rows[..., i0 + 1] * frac
    if scale is not None:
        fine = fine * scale
    return jnp.pad(fine, [(0, 0)] * (fine.ndim - 1) + [(1, 1)])


def _nearest(table: jax.Array, pos: jax.Array) -> jax.Array:
    """``table`` [B, M + 2, G] (zero-padded) at the nearest fine sample to ``pos`` [H, W] (fine
    units, 0 = first real sample) -> [B, H, W, G]; positions off the table read the padding."""
    idx = jnp.clip(pos + 1.5, 0.0, table.shape[1] - 1.0).astype(jnp.int32)
    return table[:, idx]


def _fine_grid(channel: np.ndarray, num_detectors: int) -> tuple[np.ndarray, np.ndarray]:
    channel = np.clip(channel, 0.0, num_detectors - 1.0)
    i0 = np.minimum(np.floor(channel), num_detectors - 2).astype(np.int32)
    return i0, (channel - i0).astype(np.float32)


def _sum_over_views(filtered: jax.Array, angles: np.ndarray, size: int,
                    make_tables: Callable[[jax.Array], jax.Array],
                    view_image: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
                    ) -> jax.Array:
    """Sum over views of ``view_image(tables [B, M + 2, G], cos, sin) -> [B, H, W, G]``.

    The square grid is unchanged by a quarter turn about the isocentre, so the view at
    angle + pi/2 seen at pixel p equals the view at angle seen at p turned back by pi/2. When the
    views come in such groups (``quarter_turn_groups``), each pixel's detector position and
    weight are computed once per group and the group's G tables, interleaved so one gather reads
    G adjacent values, go into G accumulators that are turned into place at the end.

    Views go in chunks: the fine tables of a chunk are built in the outer loop, so XLA cannot
    fuse their construction (two gathers per sample) into the per-pixel gather of the inner loop,
    which would recompute them for every pixel. Zero projections pad the last chunk.
    """
    batch, num_views, n_det = filtered.shape
    groups = quarter_turn_groups(angles)
    per_group = num_views // groups
    filtered = filtered.reshape(batch, groups, per_group, n_det)
    angles = angles[:per_group]
    chunk = min(_VIEW_CHUNK, per_group)
    num_chunks = -(-per_group // chunk)
    extra = num_chunks * chunk - per_group
    filtered = jnp.pad(filtered, ((0, 0), (0, 0), (0, extra), (0, 0)))
    angles = np.concatenate([angles, np.zeros(extra)])
    cos_a = jnp.asarray(np.cos(angles), jnp.float32)
    sin_a = jnp.asarray(np.sin(angles), jnp.float32)

    def outer(c, acc):
        rows = jax.lax.dynamic_slice_in_dim(filtered, c * chunk, chunk, axis=2)
        tables = jnp.moveaxis(make_tables(rows), 1, -1)

        def inner(j, acc):
            v = c * chunk + j
            return acc + view_image(tables[:, j], cos_a[v], sin_a[v])

        return jax.lax.fori_loop(0, chunk, inner, acc)

    acc = jnp.zeros((batch, size, size, groups), jnp.float32)
    acc = jax.lax.fori_loop(0, num_chunks, outer, acc)
    return sum(jnp.rot90(acc[..., k], k=k, axes=(1, 2)) for k in range(groups))


def _backproject_parallel(filtered: jax.Array, geometry: ParallelBeamGeometry) -> jax.Array:
    n_det = geometry.num_detectors
    oversampling = fine_oversampling(geometry)
    count = oversampling * (n_det - 1) + 1
    i0, frac = _fine_grid(np.arange(count) / oversampling, n_det)
    # Pixel positions in fine-grid units: t / (spacing / oversampling) + centre.
    coords = jnp.asarray(geometry.image.pixel_centres_mm() * oversampling
                         / geometry.detector_spacing_mm, jnp.float32)
    xs, ys = coords[None, :], coords[::-1, None]
    centre = (count - 1) / 2.0

    def view_image(table, c, s):
        return _nearest(table, xs * c + ys * s + centre)

    acc = _sum_over_views(filtered, geometry.view_angles(), geometry.image.size_px,
                          lambda rows: _fine_tables(rows, i0, frac, None), view_image)
    return acc * (np.pi / geometry.num_views)


def _backproject_fan(filtered: jax.Array, geometry: FanBeamGeometry) -> jax.Array:
    gamma = geometry.fan_angles_rad()
    count = fine_oversampling(geometry) * (geometry.num_detectors - 1) + 1
    tan_grid = np.linspace(np.tan(gamma[0]), np.tan(gamma[-1]), count)
    i0, frac = _fine_grid((np.arctan(tan_grid) - gamma[0]) / geometry.fan_angle_spacing_rad,
                          geometry.num_detectors)
    # cos^2(gamma) on the table turns the 1 / L^2 weight into 1 / depth^2.
    cos2 = (1.0 / (1.0 + tan_grid ** 2)).astype(np.float32)
    tan_start, tan_step = float(tan_grid[0]), float(tan_grid[1] - tan_grid[0])
    coords = jnp.asarray(geometry.image.pixel_centres_mm(), jnp.float32)
    xs, ys = coords[None, :], coords[::-1, None]
    d = geometry.source_to_isocenter_mm

    def view_image(table, c, s):
        lateral = ys * c - xs * s
        inv_depth = 1.0 / (d - (xs * c + ys * s))
        pos = (lateral * inv_depth - tan_start) * (1.0 / tan_step)
        return _nearest(table, pos) * (inv_depth * inv_depth)[..., None]

    acc = _sum_over_views(filtered, geometry.view_angles(), geometry.image.size_px,
                          lambda rows: _fine_tables(rows, i0, frac, cos2), view_image)
    return acc * (2.0 * np.pi / geometry.num_views)


@functools.partial(jax.jit, static_argnames=("geometry", "window", "cutoff"))
def fbp(sinograms: jax.Array, geometry: Geometry, window: str = "hann",
        cutoff: float = 1.0) -> jax.Array:
    """Filtered backprojection of line integrals to attenuation images.

    Each view is weighted by (angular extent per view) = pi / views (parallel) or
    2 pi / views (fan beam, full scan), so the FBP of a subset of views (``geometry.subset``)
    is an unbiased estimate of the same image.

    Args:
      sinograms: [B, views, detectors] or [views, detectors] line integrals (dimensionless).
      geometry: ParallelBeamGeometry (views over pi or 2 pi) or FanBeamGeometry (full 2 pi scan).
      window: "hann" (the paper's filter) or "ramp".
      cutoff: window cutoff as a fraction of the Nyquist frequency.

    Returns:
      Images [B, H, W] (or [H, W]) of attenuation in 1/mm, float32.
    """
    sinograms = jnp.asarray(sinograms, jnp.float32)
    expected = geometry.sinogram_shape
    if sinograms.ndim not in (2, 3) or sinograms.shape[-2:] != expected:
        raise ValueError(f"fbp: expected sinograms [B, {expected[0]}, {expected[1]}] (views, "
                         f"detectors of the geometry), got {tuple(sinograms.shape)}.")
    if isinstance(geometry, FanBeamGeometry) and abs(
            geometry.angular_range_rad - 2 * np.pi) > 1e-6:
        raise ValueError("fbp: fan-beam FBP needs a full scan (FanBeamGeometry.angular_range_rad"
                         f" = 2 pi), got {geometry.angular_range_rad}; short scans need Parker "
                         "weights, which are not implemented.")
    squeeze = sinograms.ndim == 2
    batch = sinograms[None] if squeeze else sinograms
    filtered = filter_sinograms(batch, geometry, window, cutoff)
    if isinstance(geometry, ParallelBeamGeometry):
        images = _backproject_parallel(filtered, geometry)
    else:
        images = _backproject_fan(filtered, geometry)
    return images[0] if squeeze else images
