"""Forward projector (Joseph's method) and its exact adjoint, parallel and fan beam, in JAX.

Joseph's method walks each ray one pixel row (or column, whichever the ray crosses faster) at a
time and interpolates linearly between the two pixels it passes, so every ray costs ``size_px``
samples. Here the interpolation reads an 8x oversampled, linearly interpolated copy of each row
(column) at the nearest sample, i.e. the crossing position is rounded to 1/16 pixel: one gather
per sample instead of two, 1.8x faster on CPU, and still within 0.1% of closed-form line integrals
of smooth phantoms (tests). Views are processed one at a time inside ``lax.map``, which keeps
memory at O(batch x detectors x size_px) plus the 8x row copies, whatever the number of views.

Units: images are linear attenuation coefficients in 1/mm; sinograms are dimensionless line
integrals (attenuation times path length in mm). Conventions are in ``geometry.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax.ct.geometry import Geometry, ParallelBeamGeometry, quarter_turn_groups

_OVERSAMPLING = 8


def _ray_points_and_directions(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """A point on every ray and its unit direction, each [views, detectors, 2] (x, y) in mm."""
    angles = geometry.view_angles()[:, None]
    shape = geometry.sinogram_shape
    if isinstance(geometry, ParallelBeamGeometry):
        t = geometry.detector_positions_mm()[None, :]
        point = np.stack([t * np.cos(angles), t * np.sin(angles)], axis=-1)
        direction = np.stack([np.broadcast_to(-np.sin(angles), shape),
                              np.broadcast_to(np.cos(angles), shape)], axis=-1)
        return point, direction
    gamma = geometry.fan_angles_rad()[None, :]
    d = geometry.source_to_isocenter_mm
    source = np.stack([np.broadcast_to(d * np.cos(angles), shape),
                       np.broadcast_to(d * np.sin(angles), shape)], axis=-1)
    direction = np.stack([-np.cos(gamma) * np.cos(angles) - np.sin(gamma) * np.sin(angles),
                          -np.cos(gamma) * np.sin(angles) + np.sin(gamma) * np.cos(angles)],
                         axis=-1)
    return source, direction


def _joseph_tables(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-ray constants of Joseph's method, each [views, detectors].

    A ray steeper than 45 degrees is sampled once per image row ``m`` at the fractional column
    ``start + slope * m`` (plane 0: the image); a flatter ray once per column ``m`` at the
    fractional row ``start + slope * m`` (plane 1: the transposed image). ``weight`` is the path
    length per step, pixel_size / |direction component along the stepping axis|.
    """
    point, direction = _ray_points_and_directions(geometry)
    n = geometry.image.size_px
    h = geometry.image.pixel_size_mm
    half = (n - 1) / 2.0
    px, py = point[..., 0], point[..., 1]
    dx, dy = direction[..., 0], direction[..., 1]
    steep = np.abs(dy) >= np.abs(dx)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Row m is at y = (half - m) h; the ray meets it at x = px + (y - py) dx / dy.
        slope_s = -dx / dy
        start_s = (px + (half * h - py) * dx / dy) / h + half
        # Column m is at x = (m - half) h; the ray meets it at y = py + (x - px) dy / dx.
        slope_f = -dy / dx
        start_f = half - (py + (-half * h - px) * dy / dx) / h
    plane = np.where(steep, 0, 1).astype(np.int32)
    start = np.where(steep, start_s, start_f)
    slope = np.where(steep, slope_s, slope_f)
    weight = h / np.where(steep, np.abs(dy), np.abs(dx))
    return plane, start.astype(np.float32), slope.astype(np.float32), weight.astype(np.float32)


def _as_batch(images: jax.Array, geometry: Geometry, what: str) -> tuple[jax.Array, bool]:
    n = geometry.image.size_px
    if images.ndim not in (2, 3) or images.shape[-2:] != (n, n):
        raise ValueError(f"{what}: expected images [B, {n}, {n}] or [{n}, {n}] matching "
                         f"geometry.image.size_px={n}, got shape {tuple(images.shape)}.")
    return (images[None], True) if images.ndim == 2 else (images, False)


def _forward(images: jax.Array, geometry: Geometry) -> jax.Array:
    """Unjitted forward projection of [B, N, N] attenuation images -> [B, views, detectors].

    When the views come in quarter-turn groups (``quarter_turn_groups``: view v + k V/G is
    view v turned by k pi/2), view v + k V/G of the image is view v of the image turned by
    -k pi/2; the G turned copies are interleaved on a last axis, so each ray sample is one gather
    of G adjacent values and only V/G views' ray tables are walked.
    """
    n = geometry.image.size_px
    batch = images.shape[0]
    groups = quarter_turn_groups(geometry.view_angles())
    per_group = geometry.num_views // groups
    plane, start, slope, weight = (t[:per_group] for t in _joseph_tables(geometry))
    turned = jnp.stack([jnp.rot90(images, k=-k, axes=(1, 2)) for k in range(groups)], axis=-1)
    # Each row (plane 0) and column (plane 1) is linearly interpolated once onto a grid
    # _OVERSAMPLING times finer, so a ray sample costs one gather (nearest fine sample) instead of
    # two; gathers dominate the cost on CPU. One zero pads each end so rays leaving the image
    # read zero instead of an edge pixel.
    planes = jnp.stack([turned, jnp.swapaxes(turned, 1, 2)], axis=1)  # [B, 2, N, N, G]
    fine_pos = np.arange(_OVERSAMPLING * (n - 1) + 1) / _OVERSAMPLING
    i0 = np.minimum(np.floor(fine_pos), n - 2).astype(np.int32)
    frac = (fine_pos - i0).astype(np.float32)[:, None]
    fine = planes[:, :, :, i0] * (1.0 - frac) + planes[:, :, :, i0 + 1] * frac
    fine = jnp.pad(fine, ((0, 0), (0, 0), (0, 0), (1, 1), (0, 0)))
    row_len = fine.shape[3]
    flat = fine.reshape(batch, -1, groups)
    steps = jnp.arange(n, dtype=jnp.float32)
    row_offsets = jnp.arange(n, dtype=jnp.int32) * row_len

    def one_view(tables):
        view_plane, view_start, view_slope, view_weight = tables
        pos = (view_start[:, None] + view_slope[:, None] * steps[None, :]) * _OVERSAMPLING + 1.5
        pos = jnp.clip(pos, 0.0, row_len - 1.0).astype(jnp.int32)
        idx = view_plane[:, None] * (n * row_len) + row_offsets[None, :] + pos
        return jnp.sum(flat[:, idx], axis=2) * view_weight[:, None]  # [B, detectors, G]

    tables = (jnp.asarray(plane), jnp.asarray(start), jnp.asarray(slope), jnp.asarray(weight))
    sino = jax.lax.map(one_view, tables)  # [V / G, B, detectors, G]
    sino = jnp.transpose(sino, (1, 3, 0, 2))  # [B, G, V / G, detectors]
    return sino.reshape(batch, geometry.num_views, geometry.num_detectors)


@functools.partial(jax.jit, static_argnames=("geometry",))
def forward_project(images: jax.Array, geometry: Geometry) -> jax.Array:
    """Line integrals of attenuation images along every ray of ``geometry`` (Joseph's method).

    Args:
      images: [B, H, W] or [H, W] linear attenuation, 1/mm, on ``geometry.image``.
      geometry: a ParallelBeamGeometry or FanBeamGeometry (static: hashable, frozen).

    Returns:
      Sinograms [B, views, detectors] (or [views, detectors]), dimensionless, float32.
    """
    batch, squeeze = _as_batch(jnp.asarray(images, jnp.float32), geometry, "forward_project")
    sino = _forward(batch, geometry)
    return sino[0] if squeeze else sino


@functools.partial(jax.jit, static_argnames=("geometry",))
def back_project(sinograms: jax.Array, geometry: Geometry) -> jax.Array:
    """The exact adjoint A^T of ``forward_project`` (unfiltered, matched backprojection).

    Args:
      sinograms: [B, views, detectors] or [views, detectors], dimensionless.
      geometry: the geometry used by ``forward_project``.

    Returns:
      Images [B, H, W] (or [H, W]) in mm (path-length weighted sums), float32.
    """
    sinograms = jnp.asarray(sinograms, jnp.float32)
    expected = geometry.sinogram_shape
    if sinograms.ndim not in (2, 3) or sinograms.shape[-2:] != expected:
        raise ValueError(f"back_project: expected sinograms [B, {expected[0]}, {expected[1]}] "
                         f"(views, detectors of the geometry), got {tuple(sinograms.shape)}.")
    squeeze = sinograms.ndim == 2
    batch = sinograms[None] if squeeze else sinograms
    n = geometry.image.size_px
    image_spec = jax.ShapeDtypeStruct((batch.shape[0], n, n), jnp.float32)
    transpose = jax.linear_transpose(lambda x: _forward(x, geometry), image_spec)
    (images,) = transpose(batch)
    return images[0] if squeeze else images
