"""Writes synthetic raw helical CT scans as DICOM-CT-PD series (full and quarter dose).

  python -m data_prep.ctpd --out=/tmp/ctpd_tiny --preset=tiny
  python -m data_prep.ctpd --out=/tmp/ctpd_abdomen --preset=quick --phantom=abdomen --seed=3
  python -m data_prep.ctpd --out=/tmp/ctpd_patients --preset=small --phantom=abdomen \
      --num_patients=11       # virtual-0000 ... virtual-0010, for data_prep.ct --config=projections

A 3-D phantom is scanned on a helical trajectory with the geometry of the LDCT data set's scanner
(595 mm source-isocentre, 1085.6 mm source-detector, cylindrical detector; fewer channels, rows and
views per rotation in the small presets, with a wider channel pitch so the field of view stays
about 500 mm), and written in the layout ``consensus_jax.ct.ctpd`` reads: one file per view
named by InstanceNumber, the DICOM-CT-PD private tags (float32 values as little-endian bytes in
implicit-VR files, as the public readers unpack them), uint16 pixel data with RescaleSlope /
RescaleIntercept, and the orientation stated in ``ctpd``'s docstring (Manufacturer is written as
SIEMENS, whose files that orientation describes; ManufacturerModelName marks the files as
synthetic). The output folder holds
``full_DICOM-CT-PD/`` and ``quarter_DICOM-CT-PD/`` (one series each, the same views) and
``fixture.json`` (the settings and, for the ellipsoid phantom, its shapes). It is written under a
temporary name and renamed when complete; an existing ``--out`` is refused.

Phantoms:
- ``ellipsoids``: ellipsoids and z-aligned elliptic cylinders of constant attenuation, whose line
  integral along any ray is exact (closed-form chord lengths): the reference for the rebinning's
  accuracy, and ``fan_line_integrals`` gives the exact 2-D fan-beam projections of one slice.
- ``abdomen``: a virtual abdomen patient (``consensus_jax.phantoms.abdomen``), its slices stacked
  along z (the patient's own z in mm is the table position) and projected by ray marching: the
  trilinearly interpolated volume sampled every half in-plane pixel along each ray inside the
  field of view (midpoint rule). Approximate, but the same model for every ray.

Dose: the full dose has Poisson counts ``I0 exp(-p)``, the quarter dose binomially thinned counts
of the same photons (``consensus_jax.ct.dose``), as the data set's quarter dose was made by noise
insertion into the full dose; both are post-logged.

Flying focal spot (FFSXY): the source alternates between angular offsets +-dbeta with
``dbeta = dgamma / (4 (1 - D_so / D_sd))``, which shifts the central ray by a quarter channel
(at the isocentre) each way, interleaving the two focal spots' rays; FFSZ alternates axial
offsets that shift the central ray by a quarter row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax import errors
from consensus_jax.ct import ctpd
from consensus_jax.ct.dose import MU_WATER_PER_MM, full_dose_counts, post_log, thin_counts
from consensus_jax.ct.geometry import FanBeamGeometry
from consensus_jax.ct.rebin import HelicalScan
from consensus_jax.errors import ConfigError, OutputExistsError

FULL_DOSE_FOLDER = "full_DICOM-CT-PD"
QUARTER_DOSE_FOLDER = "quarter_DICOM-CT-PD"
RESCALE_SLOPE = 1.0 / 4096.0  # stored values cover line integrals in [-1, 15)
RESCALE_INTERCEPT = -1.0
_LDCT_CHANNELS = 736
_LDCT_CHANNEL_SPACING_MM = 1.2858
_ROW_SPACING_MM = 0.6 * 1085.6 / 595.0  # 0.6 mm rows at the isocentre
_VIEW_CHUNK = 64


# --- phantoms ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid of constant attenuation.

    Attributes:
      centre_mm: (x, y, z) in mm (project frame: x right, y up, z along the table).
      semi_axes_mm: (a, b, c): a along the rotated x axis, b along the rotated y axis, c along z.
      rotation_rad: rotation of the (a, b) axes about z from x, rad.
      value: attenuation added inside, 1/mm.
    """

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation_rad: float
    value: float


@dataclasses.dataclass(frozen=True)
class Cylinder:
    """An elliptic cylinder along z of constant attenuation, ``|z - z_c| <= half_length_mm``.

    Attributes:
      centre_mm: (x, y, z) in mm.
      semi_axes_mm: (a, b) of the cross-section, mm.
      half_length_mm: half its extent along z, mm.
      rotation_rad: rotation of the cross-section's a axis from x, rad.
      value: attenuation added inside, 1/mm.
    """

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float]
    half_length_mm: float
    rotation_rad: float
    value: float


Shape = Ellipsoid | Cylinder
MU_WATER = MU_WATER_PER_MM  # 1/mm


def ellipsoid_phantom() -> tuple[Shape, ...]:
    """An abdomen-like phantom of ellipsoids and cylinders centred on z = 0 (values in 1/mm).

    Long water body and spine (slowly varying in z) with organs and small spheres whose sharp
    z edges lie near z = 0, where the rebinning is tested; nothing is mirror-symmetric.
    """
    w = MU_WATER
    return (
        Cylinder((0.0, 0.0, 0.0), (165.0, 120.0), 120.0, 0.0, w),              # body, water
        Cylinder((0.0, -85.0, 0.0), (20.0, 16.0), 120.0, 0.0, 0.8 * w),         # spine, +800 HU
        Ellipsoid((-60.0, 15.0, 20.0), (75.0, 55.0, 70.0), 0.3, 0.05 * w),      # liver
        Ellipsoid((65.0, -45.0, -10.0), (25.0, 35.0, 40.0), -0.4, 0.03 * w),    # kidney
        Ellipsoid((-55.0, -50.0, 5.0), (22.0, 30.0, 30.0), 0.2, 0.03 * w),      # kidney
        Ellipsoid((45.0, 50.0, 3.0), (12.0, 12.0, 12.0), 0.0, -0.06 * w),       # lesion
        Ellipsoid((-25.0, -15.0, -2.0), (7.0, 7.0, 7.0), 0.0, 0.5 * w),         # calcification
        Ellipsoid((95.0, 35.0, 0.0), (18.0, 9.0, 6.0), 0.5, 0.3 * w),           # contrast vessel
    )


def _in_frame(shape: Shape, points: np.ndarray) -> np.ndarray:
    """``points`` [..., 3] in the shape's frame, scaled so its cross-section is the unit disk."""
    c, s = math.cos(shape.rotation_rad), math.sin(shape.rotation_rad)
    x = points[..., 0] - shape.centre_mm[0]
    y = points[..., 1] - shape.centre_mm[1]
    z = points[..., 2] - shape.centre_mm[2]
    a, b = shape.semi_axes_mm[:2]
    return np.stack([(c * x + s * y) / a, (-s * x + c * y) / b, z], axis=-1)


def shape_line_integrals(shapes: Sequence[Shape], start: np.ndarray,
                         end: np.ndarray) -> np.ndarray:
    """Exact line integrals of the phantom along the segments ``start`` -> ``end``.

    The segments must begin and end outside every shape (source to detector). For a shape mapped
    to the unit sphere (ellipsoid) or unit-disk cylinder, the ray p(t) = start + t (end - start)
    meets the quadric where ``A t^2 + 2 B t + C = 0``; the chord is ``2 sqrt(B^2 - A C) / A`` in
    t, times the segment length (a cylinder's chord is also clipped to its z slab).

    Args:
      start, end: [..., 3] mm, broadcastable.

    Returns:
      [...] float64 line integrals (dimensionless).
    """
    start, end = np.broadcast_arrays(np.asarray(start, np.float64), np.asarray(end, np.float64))
    length = np.linalg.norm(end - start, axis=-1)
    total = np.zeros(start.shape[:-1])
    for shape in shapes:
        p = _in_frame(shape, start)
        d = _in_frame(shape, end) - p
        if isinstance(shape, Ellipsoid):
            cz = shape.semi_axes_mm[2]
            p[..., 2] /= cz
            d[..., 2] = (end[..., 2] - start[..., 2]) / cz
            a = np.sum(d * d, axis=-1)
            b = np.sum(p * d, axis=-1)
            c = np.sum(p * p, axis=-1) - 1.0
            disc = np.clip(b * b - a * c, 0.0, None)
            chord = 2.0 * np.sqrt(disc) / a
        else:
            a = d[..., 0] ** 2 + d[..., 1] ** 2
            b = p[..., 0] * d[..., 0] + p[..., 1] * d[..., 1]
            c = p[..., 0] ** 2 + p[..., 1] ** 2 - 1.0
            disc = np.clip(b * b - a * c, 0.0, None)
            root = np.sqrt(disc)
            with np.errstate(divide="ignore", invalid="ignore"):
                t0, t1 = (-b - root) / a, (-b + root) / a
                dz = d[..., 2]
                h = shape.half_length_mm
                za, zb = (-h - p[..., 2]) / dz, (h - p[..., 2]) / dz
            axial = dz == 0
            inside = np.abs(p[..., 2]) <= h
            z0 = np.where(axial, np.where(inside, -np.inf, np.inf), np.minimum(za, zb))
            z1 = np.where(axial, np.where(inside, np.inf, -np.inf), np.maximum(za, zb))
            chord = np.clip(np.minimum(t1, z1) - np.maximum(t0, z0), 0.0, None)
            chord = np.where(a > 0, chord, 0.0)
        total += shape.value * chord * length
    return total


def shape_slice_image(shapes: Sequence[Shape], x_mm: np.ndarray, y_mm: np.ndarray,
                      z_mm: float) -> np.ndarray:
    """Attenuation (1/mm) of the phantom at the points (x, y, z), x and y [...] broadcastable."""
    x, y = np.broadcast_arrays(x_mm, y_mm)
    points = np.stack([x, y, np.full(x.shape, float(z_mm))], axis=-1)
    image = np.zeros(x.shape)
    for shape in shapes:
        q = _in_frame(shape, points)
        if isinstance(shape, Ellipsoid):
            inside = q[..., 0] ** 2 + q[..., 1] ** 2 + (q[..., 2] / shape.semi_axes_mm[2]) ** 2
            image += shape.value * (inside <= 1.0)
        else:
            image += shape.value * ((q[..., 0] ** 2 + q[..., 1] ** 2 <= 1.0)
                                    & (np.abs(q[..., 2]) <= shape.half_length_mm))
    return image


# --- scan geometry -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScanPreset:
    """A helical scan's size and settings.

    Attributes:
      num_channels, num_rows: detector size; the channel pitch is scaled so the fan spans the
        LDCT scanner's 736 x 1.2858 mm at the detector; rows are 0.6 mm at the isocentre.
      views_per_rotation: N (focal-spot positions included, as the files count them).
      num_rotations: length of the scan in rotations.
      pitch: table feed per rotation / collimation at the isocentre.
      ffs_mode: "FFSNONE", "FFSXY", "FFSZ" or "FFSXYZ".
      photons_per_ray: full-dose unattenuated photons per ray, I0.
      start_angle_rad: source angle of the first view (project frame).
    """

    num_channels: int
    num_rows: int
    views_per_rotation: int
    num_rotations: float
    pitch: float = 1.0
    ffs_mode: str = "FFSXY"
    photons_per_ray: float = 2e5
    start_angle_rad: float = 0.3


PRESETS = {
    "tiny": ScanPreset(num_channels=48, num_rows=8, views_per_rotation=64, num_rotations=2.5),
    "small": ScanPreset(num_channels=96, num_rows=16, views_per_rotation=288, num_rotations=3.0),
    "quick": ScanPreset(num_channels=184, num_rows=16, views_per_rotation=576, num_rotations=3.0),
    "full": ScanPreset(num_channels=736, num_rows=64, views_per_rotation=2304, num_rotations=3.0),
}
FFS_MODES = ("FFSNONE", "FFSXY", "FFSZ", "FFSXYZ")


def helical_scan(preset: ScanPreset, z_centre_mm: float = 0.0,
                 source_to_isocenter_mm: float = 595.0,
                 source_to_detector_mm: float = 1085.6) -> HelicalScan:
    """The helical trajectory of ``preset``, centred on ``z_centre_mm``, table moving towards +z
    and angles increasing (project frame)."""
    if preset.ffs_mode not in FFS_MODES:
        raise ConfigError(f"ffs_mode={preset.ffs_mode!r} is not one of {FFS_MODES}.")
    n = preset.views_per_rotation
    if preset.ffs_mode != "FFSNONE" and n % 4:
        raise ConfigError(f"views_per_rotation={n}: with a flying focal spot it must be a "
                          "multiple of 4 (the focal-spot pattern repeats every rotation).")
    channel_mm = _LDCT_CHANNEL_SPACING_MM * _LDCT_CHANNELS / preset.num_channels
    row_mm = _ROW_SPACING_MM * (source_to_detector_mm / 1085.6) * (595.0 / source_to_isocenter_mm)
    collimation = preset.num_rows * row_mm * source_to_isocenter_mm / source_to_detector_mm
    feed = preset.pitch * collimation
    views = int(math.ceil(preset.num_rotations * n))
    v = np.arange(views)
    z = z_centre_mm + (v - (views - 1) / 2.0) * feed / n
    beta = preset.start_angle_rad + v * (2 * math.pi / n)
    magnification_gap = 1.0 - source_to_isocenter_mm / source_to_detector_mm
    dbeta = (channel_mm / source_to_detector_mm) / (4.0 * magnification_gap)
    dz = row_mm * (source_to_isocenter_mm / source_to_detector_mm) / (4.0 * magnification_gap)
    xy = preset.ffs_mode in ("FFSXY", "FFSXYZ")
    zz = preset.ffs_mode in ("FFSZ", "FFSXYZ")
    sign_xy = np.where(v % 2 == 0, 1.0, -1.0)
    sign_z = np.where((v // (2 if xy else 1)) % 2 == 0, 1.0, -1.0)
    return HelicalScan(
        source_angles_rad=beta, table_positions_mm=z,
        ffs_angular_rad=dbeta * sign_xy if xy else np.zeros(views),
        ffs_axial_mm=dz * sign_z if zz else np.zeros(views),
        ffs_radial_mm=np.zeros(views), views_per_rotation=n,
        num_rows=preset.num_rows, num_channels=preset.num_channels,
        channel_spacing_mm=channel_mm, row_spacing_mm=row_mm,
        source_to_isocenter_mm=source_to_isocenter_mm,
        source_to_detector_mm=source_to_detector_mm,
        # A quarter-channel offset, as on clinical scanners; rows centred.
        central_channel=(preset.num_channels - 1) / 2.0 + 0.25,
        central_row=(preset.num_rows - 1) / 2.0)


def ray_endpoints(scan: HelicalScan, view_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source and detector-element centre of every ray of the views ``view_indices``.

    Returns:
      (sources [n, 1, 1, 3], detector points [n, rows, channels, 3]) in mm, project frame; the
      detector arc is centred on the focal centre, the source carries the focal-spot offsets.
    """
    idx = np.asarray(view_indices)
    beta = scan.source_angles_rad[idx][:, None, None]
    z = scan.table_positions_mm[idx][:, None, None]
    rho = scan.source_to_isocenter_mm + scan.ffs_radial_mm[idx][:, None, None]
    angle = beta + scan.ffs_angular_rad[idx][:, None, None]
    source = np.stack(np.broadcast_arrays(rho * np.cos(angle), rho * np.sin(angle),
                                          z + scan.ffs_axial_mm[idx][:, None, None]), axis=-1)
    gamma = (np.arange(scan.num_channels) - scan.central_channel) * scan.fan_angle_spacing_rad
    height = (np.arange(scan.num_rows) - scan.central_row) * scan.row_spacing_mm
    g = gamma[None, None, :]
    d_so, d_sd = scan.source_to_isocenter_mm, scan.source_to_detector_mm
    # F + D_sd (-cos g e + sin g t), e = (cos b, sin b), t = (-sin b, cos b).
    px = d_so * np.cos(beta) - d_sd * (np.cos(g) * np.cos(beta) + np.sin(g) * np.sin(beta))
    py = d_so * np.sin(beta) + d_sd * (-np.cos(g) * np.sin(beta) + np.sin(g) * np.cos(beta))
    pz = z + height[None, :, None]
    shape = (idx.size, scan.num_rows, scan.num_channels)
    detector = np.stack([np.broadcast_to(px, shape), np.broadcast_to(py, shape),
                         np.broadcast_to(pz, shape)], axis=-1)
    return source, detector


def project_shapes(shapes: Sequence[Shape], scan: HelicalScan,
                   view_indices: np.ndarray | None = None) -> np.ndarray:
    """Exact helical line integrals of an ellipsoid phantom, [n, rows, channels] float64."""
    idx = np.arange(scan.num_views) if view_indices is None else np.asarray(view_indices)
    out = np.empty((idx.size, scan.num_rows, scan.num_channels))
    for i in range(0, idx.size, _VIEW_CHUNK):
        source, detector = ray_endpoints(scan, idx[i:i + _VIEW_CHUNK])
        out[i:i + _VIEW_CHUNK] = shape_line_integrals(shapes, source, detector)
    return out


def fan_line_integrals(shapes: Sequence[Shape], geometry: FanBeamGeometry,
                       z_mm: float) -> np.ndarray:
    """Exact 2-D fan-beam line integrals of the phantom's slice at ``z_mm`` on ``geometry``,
    [views, detectors] float64 (the rays of ``geometry.py``, in the plane z = z_mm)."""
    beta = geometry.view_angles()[:, None]
    gamma = geometry.fan_angles_rad()[None, :]
    d = geometry.source_to_isocenter_mm
    source = np.stack(np.broadcast_arrays(d * np.cos(beta), d * np.sin(beta),
                                          np.full(beta.shape, float(z_mm))), axis=-1)
    dx = -np.cos(gamma) * np.cos(beta) - np.sin(gamma) * np.sin(beta)
    dy = -np.cos(gamma) * np.sin(beta) + np.sin(gamma) * np.cos(beta)
    end = source + 2.0 * d * np.stack(np.broadcast_arrays(dx, dy, np.zeros_like(dx)), axis=-1)
    return shape_line_integrals(shapes, source, end)


def volume_projector(mu: np.ndarray, pixel_size_mm: float, slice_positions_mm: np.ndarray,
                     scan: HelicalScan) -> Callable[[np.ndarray], np.ndarray]:
    """A function: view indices [n] -> helical line integrals of a volume by ray marching,
    [n, rows, channels] float32.

    Args:
      mu: [S, H, W] attenuation (1/mm); row 0 at the top (+y), as ``geometry.ImageGrid``.
      pixel_size_mm: in-plane pixel pitch.
      slice_positions_mm: [S] evenly spaced z of the slices (increasing).
      scan: the helical geometry.

    Each ray is sampled at the midpoints of steps of half a pixel (in-plane) across the circle
    enclosing the image, the volume read by trilinear interpolation (zero outside).
    """
    from jax.scipy.ndimage import map_coordinates

    num_slices, size, _ = mu.shape
    spacing = float(slice_positions_mm[1] - slice_positions_mm[0]) if num_slices > 1 else 1.0
    radius = math.sqrt(2.0) * size * pixel_size_mm / 2.0
    steps = int(math.ceil(2.0 * radius / (pixel_size_mm / 2.0)))
    volume = jnp.asarray(mu, jnp.float32)
    z0 = float(slice_positions_mm[0])

    @jax.jit
    def one_view(src, det):
        d = det - src  # [R, C, 3]
        # In-plane crossing of the circle |x| = radius: t in [t0, t1] along src + t d.
        a = d[..., 0] ** 2 + d[..., 1] ** 2
        b = src[..., 0] * d[..., 0] + src[..., 1] * d[..., 1]
        c = src[..., 0] ** 2 + src[..., 1] ** 2 - radius ** 2
        root = jnp.sqrt(jnp.maximum(b * b - a * c, 0.0))
        t0, t1 = (-b - root) / a, (-b + root) / a
        frac = (jnp.arange(steps) + 0.5) / steps
        t = t0[..., None] + (t1 - t0)[..., None] * frac  # [R, C, K]
        p = src[..., None, :] + t[..., None] * d[..., None, :]
        coords = [(p[..., 2] - z0) / spacing,
                  (size - 1) / 2.0 - p[..., 1] / pixel_size_mm,
                  p[..., 0] / pixel_size_mm + (size - 1) / 2.0]
        values = map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)
        return values.mean(axis=-1) * (t1 - t0) * jnp.linalg.norm(d, axis=-1)

    def project(view_indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(view_indices)
        out = np.empty((idx.size, scan.num_rows, scan.num_channels), np.float32)
        for i in range(idx.size):
            source, detector = ray_endpoints(scan, idx[i:i + 1])
            src = np.broadcast_to(source[0], detector[0].shape)
            out[i] = np.asarray(one_view(jnp.asarray(src, jnp.float32),
                                         jnp.asarray(detector[0], jnp.float32)))
        return out

    return project


# --- dose and files ----------------------------------------------------------------------------


@jax.jit
def _noisy_chunk(line_integrals: jax.Array, key: jax.Array, photons_per_ray: float,
                 dose_fraction: float) -> tuple[jax.Array, jax.Array]:
    k_full, k_thin = jax.random.split(key, 2)
    counts = full_dose_counts(line_integrals, k_full, photons_per_ray)
    thinned = thin_counts(counts, k_thin, dose_fraction)
    return (post_log(counts, photons_per_ray),
            post_log(thinned, dose_fraction * photons_per_ray))


def noisy_views(line_integrals: np.ndarray, seed: int, first_view: int, photons_per_ray: float,
                dose_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Noisy full- and low-dose post-log projections of at most ``_VIEW_CHUNK`` views that start
    at view ``first_view`` (the noise depends on the seed and the view, not on the chunking):
    Poisson full dose, binomially thinned low dose; [n, rows, channels] float32 each."""
    n = line_integrals.shape[0]
    if n > _VIEW_CHUNK:
        raise ValueError(f"noisy_views: at most {_VIEW_CHUNK} views at a time, got {n}.")
    # One compiled shape: the chunk is padded to _VIEW_CHUNK views.
    chunk = np.pad(np.asarray(line_integrals, np.float32),
                   ((0, _VIEW_CHUNK - n), (0, 0), (0, 0)))
    key = jax.random.fold_in(jax.random.PRNGKey(seed), first_view)
    full, low = _noisy_chunk(chunk, key, photons_per_ray, dose_fraction)
    return np.asarray(full)[:n], np.asarray(low)[:n]


def dose_pair(line_integrals: np.ndarray, seed: int, photons_per_ray: float,
              dose_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """``noisy_views`` of all views [V, rows, channels]: (full dose, low dose), float32."""
    full = np.empty(line_integrals.shape, np.float32)
    low = np.empty(line_integrals.shape, np.float32)
    for i in range(0, line_integrals.shape[0], _VIEW_CHUNK):
        full[i:i + _VIEW_CHUNK], low[i:i + _VIEW_CHUNK] = noisy_views(
            line_integrals[i:i + _VIEW_CHUNK], seed, i, photons_per_ray, dose_fraction)
    return full, low


def quantize(line_integrals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Line integrals -> (stored uint16, the values the reader will return as float32)."""
    stored = np.clip(np.rint((np.asarray(line_integrals, np.float64) - RESCALE_INTERCEPT)
                             / RESCALE_SLOPE), 0, 65535).astype(np.uint16)
    values = (stored * RESCALE_SLOPE + RESCALE_INTERCEPT).astype(np.float32)
    return stored, values


def _float_bytes(*values: float) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def write_series(folder: Path, projections: np.ndarray, scan: HelicalScan, *, description: str,
                 study_uid: str, mu_water: float = MU_WATER, ffs_mode: str = "FFSNONE") -> None:
    """Writes [V, rows, channels] line integrals (project orientation) as one DICOM-CT-PD file
    per view into the existing empty ``folder``: ``000001.dcm``, ... in view order."""
    from pydicom.uid import generate_uid

    write_views(folder, projections, scan, np.arange(scan.num_views), series_uid=generate_uid(),
                study_uid=study_uid, description=description, mu_water=mu_water,
                ffs_mode=ffs_mode)


def write_views(folder: Path, projections: np.ndarray, scan: HelicalScan,
                view_indices: np.ndarray, *, series_uid: str, study_uid: str, description: str,
                mu_water: float = MU_WATER, ffs_mode: str = "FFSNONE") -> None:
    """Writes the views ``view_indices`` ([n, rows, channels] line integrals, project
    orientation) of one series into ``folder``, file ``<view + 1 as 6 digits>.dcm`` each."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, generate_uid

    stored, _ = quantize(projections)
    phi = np.mod(-scan.source_angles_rad, 2 * math.pi)  # the stored angle (ctpd: beta = -phi)
    column = scan.num_channels - scan.central_channel  # 1-based, stored order
    row = scan.num_rows - scan.central_row
    for i, v in enumerate(np.asarray(view_indices)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "synthetic (consensus-jax data_prep.ctpd)"
        ds.SeriesDescription = description
        ds.InstanceNumber = v + 1
        ds.Rows, ds.Columns = scan.num_channels, scan.num_rows
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = repr(RESCALE_SLOPE)
        ds.RescaleIntercept = repr(RESCALE_INTERCEPT)
        for group in (0x7029, 0x7031, 0x7033, 0x7041):
            ds.add_new((group << 16) | 0x0010, "LO", "DICOM-CT-PD")
        private = {
            ctpd.CHANNEL_SPACING: _float_bytes(scan.channel_spacing_mm),
            ctpd.ROW_SPACING: _float_bytes(scan.row_spacing_mm),
            ctpd.NUM_ROWS: np.uint16(scan.num_rows).tobytes(),
            ctpd.NUM_CHANNELS: np.uint16(scan.num_channels).tobytes(),
            ctpd.DETECTOR_SHAPE: b"CYLINDRICAL ",
            ctpd.FOCAL_ANGLE: _float_bytes(phi[v]),
            ctpd.FOCAL_AXIAL: _float_bytes(scan.table_positions_mm[v]),
            ctpd.FOCAL_RADIUS: _float_bytes(scan.source_to_isocenter_mm),
            ctpd.DETECTOR_RADIUS: _float_bytes(scan.source_to_detector_mm),
            ctpd.CENTRAL_ELEMENT: _float_bytes(column, row),
            ctpd.FFS_ANGULAR: _float_bytes(-scan.ffs_angular_rad[v]),
            ctpd.FFS_AXIAL: _float_bytes(scan.ffs_axial_mm[v]),
            ctpd.FFS_RADIAL: _float_bytes(scan.ffs_radial_mm[v]),
            ctpd.FFS_MODE: ffs_mode.ljust(len(ffs_mode) + len(ffs_mode) % 2).encode("ascii"),
            ctpd.ANGULAR_STEPS: np.uint16(scan.views_per_rotation).tobytes(),
            ctpd.WATER: f"{mu_water:.6f}".encode("ascii"),
        }
        for (tag, _, _), value in private.items():
            ds.add_new(tag, "UN", value)
        ds.PixelData = ctpd.projection_to_stored(stored[i]).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.save_as(folder / f"{v + 1:06d}.dcm", implicit_vr=True, little_endian=True,
                   enforce_file_format=True)


def _abdomen(scan: HelicalScan, seed: int) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    from consensus_jax.ct.dose import hu_to_mu
    from consensus_jax.phantoms.abdomen import virtual_patient

    size = 64 if scan.num_channels < 96 else 128 if scan.num_channels < 368 else 256
    pixel = 384.0 / size
    spacing = 1.5
    reach = scan.num_rows * scan.row_spacing_mm  # the cone's z extent, with margin
    lo = scan.table_positions_mm.min() - reach
    hi = scan.table_positions_mm.max() + reach
    first, last = int(math.floor(lo / spacing)), int(math.ceil(hi / spacing))
    indices = list(range(first, last + 1))
    hu = virtual_patient(seed, last + 1, size, pixel, slice_spacing_mm=spacing,
                         slice_indices=indices)
    project = volume_projector(np.asarray(hu_to_mu(hu)), pixel, np.asarray(indices) * spacing,
                               scan)
    return project, {"patient_seed": seed, "size_px": size, "pixel_size_mm": pixel,
                     "slice_spacing_mm": spacing, "first_slice_index": first}


def write_fixture(out: str | Path, preset: str = "tiny", phantom: str = "ellipsoids",
                  seed: int = 0, photons_per_ray: float | None = None) -> Path:
    """Scans a phantom and writes the full- and quarter-dose series under ``out`` (see the
    module docstring), ``_VIEW_CHUNK`` views at a time (memory stays that of one chunk).
    Raises OutputExistsError when ``out`` exists."""
    from pydicom.uid import generate_uid
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise OutputExistsError(f"--out {out} exists; choose a new folder (this command never "
                                "replaces one).")
    if preset not in PRESETS:
        raise ConfigError(f"--preset={preset!r}: choose one of {sorted(PRESETS)}."
                          f"{errors.closest(preset, list(PRESETS))}")
    if phantom not in ("ellipsoids", "abdomen"):
        raise ConfigError(f"--phantom={phantom!r}: choose 'ellipsoids' or 'abdomen'.")
    settings = PRESETS[preset]
    if photons_per_ray is not None:
        if not (math.isfinite(photons_per_ray) and photons_per_ray > 0):
            raise ConfigError(f"--photons_per_ray={photons_per_ray!r}: a positive number of "
                              "full-dose photons per ray, e.g. 2e5.")
        settings = dataclasses.replace(settings, photons_per_ray=float(photons_per_ray))
    if phantom == "ellipsoids":
        scan = helical_scan(settings, 0.0)
        shapes = ellipsoid_phantom()

        def project(idx):
            return project_shapes(shapes, scan, idx)

        extra = {"shapes": [{"kind": type(s).__name__, **dataclasses.asdict(s)} for s in shapes]}
    else:
        scan = helical_scan(settings, 120.0)  # mid-abdomen of the virtual patients
        project, extra = _abdomen(scan, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        study = generate_uid()
        series = {FULL_DOSE_FOLDER: generate_uid(), QUARTER_DOSE_FOLDER: generate_uid()}
        for name in series:
            (tmp / name).mkdir()
        for start in tqdm(range(0, scan.num_views, _VIEW_CHUNK), desc="scan and write",
                          unit="chunk", disable=scan.num_views < 8 * _VIEW_CHUNK):
            idx = np.arange(start, min(start + _VIEW_CHUNK, scan.num_views))
            noisy = noisy_views(project(idx), seed, start, settings.photons_per_ray)
            for (name, uid), data, what in zip(series.items(), noisy,
                                               ("full dose", "quarter dose"), strict=True):
                write_views(tmp / name, data, scan, idx, series_uid=uid, study_uid=study,
                            description=f"synthetic {phantom} {what}",
                            ffs_mode=settings.ffs_mode)
        record = {"preset": preset, "settings": dataclasses.asdict(settings), "phantom": phantom,
                  "seed": seed, "mu_water_per_mm": MU_WATER, "views": scan.num_views,
                  "table_positions_mm": [float(scan.table_positions_mm[0]),
                                         float(scan.table_positions_mm[-1])], **extra}
        (tmp / "fixture.json").write_text(json.dumps(record, indent=1))
        tmp.chmod(0o755)
        if out.exists():
            raise OutputExistsError(f"--out {out} appeared while writing; it is left as it is.")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


@errors.boundary
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_prep.ctpd``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.ctpd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helpfull", action="help", help="the same as --help")
    parser.add_argument("--out", required=True, help="new folder to write (must not exist)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="scan size: tiny (48 channels, 8 rows, 64 views per rotation), "
                             "small (96, 16, 288), quick (184, 16, 576) or full (736, 64, "
                             "2304, the data set's)")
    parser.add_argument("--phantom", default="ellipsoids", choices=("ellipsoids", "abdomen"),
                        help="analytic ellipsoids (exact line integrals) or a virtual abdomen")
    parser.add_argument("--seed", type=int, default=0,
                        help="noise seed, and the virtual patient of --phantom=abdomen")
    parser.add_argument("--photons_per_ray", type=float, default=None,
                        help="full-dose photons per ray (default: the preset's, 2e5)")
    parser.add_argument("--num_patients", type=int, default=None,
                        help="write this many patients into --out, one folder each "
                             "(virtual-<seed>, seeds --seed, --seed + 1, ...: the layout "
                             "python -m data_prep.ct --config=projections reads)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    errors.set_verbose(args.verbose)
    if args.num_patients is None:
        path = write_fixture(args.out, args.preset, args.phantom, args.seed,
                             args.photons_per_ray)
        print(f"Wrote {path}/{FULL_DOSE_FOLDER} and {path}/{QUARTER_DOSE_FOLDER}.")
        return 0
    if args.num_patients < 1:
        raise ConfigError(f"--num_patients={args.num_patients}: at least 1.")
    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        raise OutputExistsError(f"--out {root} exists and is not empty; choose a new folder.")
    for i in range(args.num_patients):
        seed = args.seed + i
        write_fixture(root / f"virtual-{seed:04d}", args.preset, args.phantom, seed,
                      args.photons_per_ray)
    print(f"Wrote {args.num_patients} patients into {root}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
