"""Helical cone-beam projections -> multi-slice full-scan fan-beam sinograms (single-slice
rebinning).

Single-slice rebinning (SSR; F. Noo, M. Defrise, R. Clackdoyle, "Single-slice rebinning method
for helical cone-beam CT", Phys. Med. Biol. 44(2), 1999), full-scan form: for a slice at axial
position ``z`` and each of the ``N`` source angles of one rotation, the helical view at that angle
whose detector focal centre lies nearest ``z`` (within half a table feed) is taken, and each of
its channels is read, by linear interpolation along the detector rows, at the row where that ray
passes the slice. The result is a 2-D fan-beam sinogram [N, channels] on the project's
``FanBeamGeometry`` (equiangular detector, conventions in ``geometry.py``), reconstructed by
``fbp``.

Helical geometry (``HelicalScan``, in the project's frame: x right, y up, z along the table):
- View ``v`` has its detector focal centre ``F`` at angle ``beta_v`` (rad) on the circle of radius
  ``D_so`` (source_to_isocenter_mm) and at table position ``z_v`` (mm).
- The detector is a cylinder arc of radius ``D_sd`` (source_to_detector_mm) about ``F``, its axis
  parallel to z, fixed to ``F``: channel ``c`` (0-based, fractional) sits at the fan angle
  ``gamma = (c - c_0) * dgamma`` seen from ``F`` (``dgamma = channel_spacing / D_sd``, measured
  from the direction F -> isocentre, positive towards (-sin beta, cos beta), as in
  ``FanBeamGeometry``); row ``r`` at the height ``(r - r_0) * row_spacing`` above ``z_v``. Arrays
  are [views, rows, channels] with the row index increasing towards +z.
- Flying focal spot (FFS): the x-ray source of view ``v`` is at angle ``beta_v + dbeta_v``, radius
  ``D_so + drho_v`` and height ``z_v + dz_v``; the detector does not move with it.

Row formula, derived for the cylindrical detector. A ray leaving the source S at the in-plane fan
angle gamma' (from the direction S -> axis) reaches the detector cylinder after the in-plane
distance ``t`` (``t = D_sd`` without FFS) at the height ``h`` above the source. Its in-plane point
of closest approach to the rotation axis lies at the in-plane distance ``rho cos gamma'`` from S
(``rho`` = |S| in the plane), where the ray is at height ``h rho cos gamma' / t``. SSR assigns each
ray to the slice it crosses at that point, so the ray of slice ``z`` has
``h = (z - z_s) t / (rho cos gamma')`` (z_s: source height), i.e. the detector row coordinate
(mm at the detector, relative to the central row, towards +z)

    v = (z_s - z_v) + (z - z_s) t / (rho cos gamma'),
    and without FFS:  v = (z - z_v) D_sd / (D_so cos gamma).

This is the flat-detector formula ``v_f = (z - z_v)(u^2 + D_sd^2) / (D_so D_sd)`` of Noo et al.
(flat detector at D_sd, u = D_sd tan gamma) carried to the cylinder, where the same ray meets the
detector at ``v = v_f cos gamma``. The line integral is multiplied by the cosine of the ray's
inclination, ``t / sqrt(t^2 + h^2)`` (flat form:
``sqrt(u^2 + D_sd^2) / sqrt(u^2 + v_f^2 + D_sd^2)``), turning the oblique path length into the
in-plane one. The sign of ``v``: rows here run towards +z, so ``v`` has the sign of ``z - z_v``;
data whose rows run towards -z give ``(z_v - z)``.

Views and rows beyond the data: full-scan SSR needs, for every angle, a view within half a table
feed of ``z``; its row ``v`` lies inside the detector when ``pitch / cos gamma <= 1`` (pitch: table
feed / collimation at the isocentre), so already at pitch 1 the outer channels of the views
farthest from ``z`` read past the edge rows (about 5-9% of the samples), and at pitch 1.4 about a
third. Such reads are clamped to the edge row (``rows_outside_fraction`` counts them;
bench/bench_ctpd.py shows the resulting error).

Flying focal spot (``ffs``), the choice made here: each view keeps its own source. With
``drho = 0`` the source of an FFS view lies on the circle of radius D_so at the angle
``beta + dbeta``, so the view is an exact fan-beam projection from that source, only with fan
angles that are not those of the nominal channels (the detector stayed put). The output ray of
channel ``k`` leaves that source at a fan angle ``gamma_k``; it meets the detector arc at the
channel ``c_0 + gamma_F / dgamma`` (a quadratic for the arc, solved in closed form), read by
linear interpolation along the channels together with the row interpolation (one bilinear read per
output sample), and the output view's angle is ``beta + dbeta``. Three modes:
- ``"native"`` (default): each focal spot keeps its own channel grid, ``gamma_k = (k - c_0 -
  sigma) dgamma`` with ``sigma`` the channel where that focal spot's central ray (gamma = 0) meets
  the detector, minus c_0 (-0.25 channel for a quarter-channel FFS). Channels are then read within
  about 0.03 channel of a measured sample, so there is hardly any interpolation along the
  channels, and the two focal spots' rays stay interleaved as the scanner meant. The views then
  come in groups (one per in-plane focal spot, e.g. the even and odd views of FFSXY), each its
  own ``FanBeamGeometry`` (``fan_geometries``); ``reconstruct`` averages their FBPs weighted by
  their views: the FBP of all views.
- ``"common"``: every view is resampled onto the nominal channels (``sigma = 0``): one geometry
  for all views, at the cost of interpolating each FFS view a quarter channel along the channels
  (a blur) and of the interleaving.
- ``"ignore"``: the offsets are ignored (every view from its focal centre), for comparison.
A radial offset ``drho`` is handled in the row formula and the channel position, but the output
geometry keeps the radius D_so (an error in the ray's distance to the isocentre of
``drho / D_so`` of it). bench/bench_ctpd.py and tests/test_ctpd.py measure the three modes.

Units: lengths in mm, angles in rad, projections are dimensionless line integrals.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax.ct.geometry import FanBeamGeometry, ImageGrid

# Angles read from float32 tags are within ~1e-6 rad of an exact step; within this they are
# snapped to it, which makes quarter turns exact (FBP shares work between them) and keeps
# views of different slices on one geometry.
_SNAP_TOLERANCE_RAD = 1e-5
# Views one rotation apart must repeat their angle to this precision for SSR to pair them.
_PERIOD_TOLERANCE_RAD = 1e-3


@dataclasses.dataclass(frozen=True, eq=False)
class HelicalScan:
    """The acquisition geometry of a helical scan, one entry per view (see the module docstring).

    Attributes:
      source_angles_rad: [V] angle beta of each view's detector focal centre, unwrapped
        (monotonic), in the project's frame (rad).
      table_positions_mm: [V] axial position z of each view's detector focal centre (mm).
      ffs_angular_rad: [V] flying-focal-spot angular offset dbeta (rad, project frame).
      ffs_axial_mm: [V] flying-focal-spot axial offset dz (mm).
      ffs_radial_mm: [V] flying-focal-spot radial offset drho (mm).
      views_per_rotation: N, views per 2 pi (the angles repeat every N views).
      num_rows, num_channels: detector size.
      channel_spacing_mm: channel pitch on the detector arc (mm at the detector).
      row_spacing_mm: row pitch (mm at the detector).
      source_to_isocenter_mm: D_so (mm).
      source_to_detector_mm: D_sd (mm).
      central_channel: c_0, 0-based fractional channel of the ray through the isocentre.
      central_row: r_0, 0-based fractional row of the ray through the isocentre.
    """

    source_angles_rad: np.ndarray
    table_positions_mm: np.ndarray
    ffs_angular_rad: np.ndarray
    ffs_axial_mm: np.ndarray
    ffs_radial_mm: np.ndarray
    views_per_rotation: int
    num_rows: int
    num_channels: int
    channel_spacing_mm: float
    row_spacing_mm: float
    source_to_isocenter_mm: float
    source_to_detector_mm: float
    central_channel: float
    central_row: float

    def __post_init__(self):
        v = self.num_views
        for name in ("table_positions_mm", "ffs_angular_rad", "ffs_axial_mm", "ffs_radial_mm"):
            if np.shape(getattr(self, name)) != (v,):
                raise ValueError(f"HelicalScan.{name} has shape {np.shape(getattr(self, name))}, "
                                 f"expected ({v},) like source_angles_rad.")
        if self.num_rows < 2 or self.num_channels < 2:
            raise ValueError(f"HelicalScan: need at least 2 rows and 2 channels, got "
                             f"{self.num_rows} x {self.num_channels}.")
        if self.views_per_rotation < 4:
            raise ValueError(f"HelicalScan.views_per_rotation={self.views_per_rotation}: "
                             "need at least 4.")

    @property
    def num_views(self) -> int:
        """V, the number of helical views."""
        return int(np.shape(self.source_angles_rad)[0])

    @property
    def fan_angle_spacing_rad(self) -> float:
        """Angular channel pitch seen from the focal centre, rad."""
        return self.channel_spacing_mm / self.source_to_detector_mm

    @property
    def rotation_sign(self) -> int:
        """+1 when the angles increase with the view index, -1 when they decrease."""
        return 1 if self.source_angles_rad[-1] >= self.source_angles_rad[0] else -1

    @property
    def table_feed_mm(self) -> float:
        """Signed table travel per rotation (mm), from the first and last views."""
        turns = abs(self.source_angles_rad[-1] - self.source_angles_rad[0]) / (2 * math.pi)
        if turns == 0:
            return 0.0
        return float(self.table_positions_mm[-1] - self.table_positions_mm[0]) / turns

    @property
    def collimation_mm(self) -> float:
        """Detector height projected to the isocentre (rows x row pitch x D_so / D_sd), mm."""
        return (self.num_rows * self.row_spacing_mm * self.source_to_isocenter_mm
                / self.source_to_detector_mm)

    @property
    def pitch(self) -> float:
        """Helical pitch: |table feed per rotation| / collimation at the isocentre."""
        return abs(self.table_feed_mm) / self.collimation_mm


FFS_MODES = ("native", "common", "ignore")


class FocalSpotGroup(NamedTuple):
    """Output views that share one focal spot's fan-beam geometry.

    Attributes:
      views: [n_g] indices of these views in the rebinned sinograms (increasing).
      geometry: their FanBeamGeometry (num_views = n_g, explicit angles, the group's channel
        offset).
    """

    views: np.ndarray
    geometry: FanBeamGeometry


def _check_mode(ffs: str) -> None:
    if ffs not in FFS_MODES:
        raise ValueError(f"ffs={ffs!r} is not one of {FFS_MODES}.")


def _check_periodic(scan: HelicalScan, ffs: str) -> None:
    _check_mode(ffs)
    n = scan.views_per_rotation
    if scan.num_views < n:
        raise ValueError(f"The scan has {scan.num_views} views, less than one rotation ({n}); "
                         "full-scan rebinning needs at least one rotation.")
    step = scan.source_angles_rad[n:] - scan.source_angles_rad[:-n]
    if step.size and np.max(np.abs(np.abs(step) - 2 * np.pi)) > _PERIOD_TOLERANCE_RAD:
        raise ValueError(f"Views {n} apart are not one rotation apart (angle steps "
                         f"{np.min(np.abs(step)):.6f}..{np.max(np.abs(step)):.6f} rad, expected "
                         f"2 pi); views_per_rotation={n} does not fit the angles.")
    if ffs != "ignore":
        for name in ("ffs_angular_rad", "ffs_axial_mm", "ffs_radial_mm"):
            a = getattr(scan, name)
            if np.any(a[n:] != a[:-n]):
                raise ValueError(f"HelicalScan.{name} does not repeat every rotation ({n} views), "
                                 "so the rebinned views of different slices would have different "
                                 "sources; rebin with ffs='ignore'.")
    if scan.table_feed_mm == 0:
        raise ValueError("The table does not move (table feed 0 mm per rotation): not a helical "
                         "scan; take the central row of each view instead of rebinning.")


def _first_rotation_order(scan: HelicalScan) -> np.ndarray:
    """Views 0..N-1 of the first rotation, ordered by increasing angle, [N] int."""
    order = np.arange(scan.views_per_rotation)
    return order if scan.rotation_sign > 0 else order[::-1].copy()


def slice_range_mm(scan: HelicalScan) -> tuple[float, float]:
    """(lowest, highest) slice position z (mm) with a view within half a table feed at every
    angle: the positions ``rebin`` accepts."""
    n = scan.views_per_rotation
    z = scan.table_positions_mm
    half = abs(scan.table_feed_mm) / 2
    last = n * ((scan.num_views - 1 - np.arange(n)) // n) + np.arange(n)  # last view of angle j
    lo = np.minimum(z[:n], z[last])
    hi = np.maximum(z[:n], z[last])
    return float(np.max(lo) - half), float(np.min(hi) + half)


def select_views(scan: HelicalScan, z_mm: float) -> np.ndarray:
    """For the slice at ``z_mm``, the helical view used at each output angle, [N] int.

    Output view ``i`` (angles increasing, ``_first_rotation_order``) reads the view ``j + m N`` with
    ``j`` its angle's view in the first rotation and ``m`` the rotation whose focal centre lies
    nearest ``z_mm``. Raises ValueError when ``z_mm`` is outside ``slice_range_mm``.
    """
    n = scan.views_per_rotation
    lo, hi = slice_range_mm(scan)
    tol = 1e-6 * max(1.0, abs(z_mm))
    if not lo - tol <= z_mm <= hi + tol:
        raise ValueError(f"Slice z = {z_mm:.3f} mm is outside the rebinnable range "
                         f"[{lo:.3f}, {hi:.3f}] mm of this scan (every angle needs a view within "
                         "half a table feed); choose slices inside it.")
    j = _first_rotation_order(scan)
    rotations = (scan.num_views - 1 - j) // n + 1  # views of angle j: j + m n, m < rotations
    m = np.arange(int(rotations.max()))
    views = j[:, None] + n * m[None, :]
    valid = m[None, :] < rotations[:, None]
    z = scan.table_positions_mm[np.where(valid, views, 0)]
    distance = np.where(valid, np.abs(z - z_mm), np.inf)
    return views[np.arange(n), np.argmin(distance, axis=1)]


def views_needed(scan: HelicalScan, z_mm: Sequence[float]) -> np.ndarray:
    """Sorted indices of the helical views that slices ``z_mm`` read, [n] int: only these need to
    be loaded (about one rotation per slice, shared between nearby slices)."""
    return np.unique(np.concatenate([select_views(scan, float(z)) for z in z_mm]))


def output_angles(scan: HelicalScan, ffs: str = "native") -> np.ndarray:
    """Source angles of the rebinned views, [N] rad (float64), increasing.

    The focal-centre angles of the first rotation are snapped to an exact even step when they lie
    within 1e-5 rad of one; unless ``ffs == "ignore"`` each view's angular offset is added.
    """
    _check_mode(ffs)
    order = _first_rotation_order(scan)
    n = scan.views_per_rotation
    beta = scan.source_angles_rad[order].astype(np.float64)
    even = beta[0] + np.arange(n) * (2 * np.pi / n)
    if np.max(np.abs(beta - even)) < _SNAP_TOLERANCE_RAD:
        beta = even
    if ffs != "ignore":
        beta = beta + scan.ffs_angular_rad[order].astype(np.float64)
    return beta


def _detector_channel(gamma: jax.Array | np.ndarray, dbeta, drho, d_so: float, d_sd: float,
                      fan_step: float, c0: float, xp=jnp):
    """Where the ray leaving the (FFS-shifted) source at fan angle ``gamma`` meets the detector:
    (fractional channel, in-plane distance t from the source in mm); arrays broadcast."""
    rho = d_so + drho
    # In the frame where the focal centre F is at (d_so, 0): source S and the ray's direction.
    cos_b, sin_b = xp.cos(dbeta), xp.sin(dbeta)
    qx, qy = rho * cos_b - d_so, rho * sin_b  # S - F
    dx = -xp.cos(gamma) * cos_b - xp.sin(gamma) * sin_b
    dy = -xp.cos(gamma) * sin_b + xp.sin(gamma) * cos_b
    # In-plane distance t from S to the detector arc |S + t d - F| = D_sd (the far root).
    qd = qx * dx + qy * dy
    t = -qd + xp.sqrt(qd * qd - (qx * qx + qy * qy) + d_sd * d_sd)
    gamma_f = xp.arctan2(qy + t * dy, -(qx + t * dx))  # fan angle of that point, seen from F
    return c0 + gamma_f / fan_step, t


def channel_shifts(scan: HelicalScan, views: np.ndarray, ffs: str = "native") -> np.ndarray:
    """sigma of each view: the channel where its source's central ray (gamma = 0) meets the
    detector, minus c_0; 0 unless ``ffs == "native"``. [len(views)] float64."""
    _check_mode(ffs)
    if ffs != "native":
        return np.zeros(len(views))
    channel, _ = _detector_channel(0.0, scan.ffs_angular_rad[views].astype(np.float64),
                                   scan.ffs_radial_mm[views].astype(np.float64),
                                   float(scan.source_to_isocenter_mm),
                                   float(scan.source_to_detector_mm), scan.fan_angle_spacing_rad,
                                   float(scan.central_channel), xp=np)
    return channel - scan.central_channel


def fan_geometries(scan: HelicalScan, image: ImageGrid,
                   ffs: str = "native") -> list[FocalSpotGroup]:
    """The geometry of the sinograms ``rebin`` returns, as groups of output views that share one
    ``FanBeamGeometry`` on the grid ``image`` (one group unless ``ffs == "native"`` with an in-plane
    flying focal spot: then one per focal spot, e.g. the even and the odd views)."""
    order = _first_rotation_order(scan)
    angles = output_angles(scan, ffs)
    sigma = channel_shifts(scan, order, ffs)
    keys = np.round(sigma, 9)
    groups = []
    for key in np.unique(keys):
        views = np.flatnonzero(keys == key)
        geometry = FanBeamGeometry(
            image=image, num_views=int(views.size), num_detectors=scan.num_channels,
            source_to_isocenter_mm=float(scan.source_to_isocenter_mm),
            source_to_detector_mm=float(scan.source_to_detector_mm),
            detector_spacing_mm=float(scan.channel_spacing_mm),
            detector_offset_channels=float((scan.num_channels - 1) / 2.0 - scan.central_channel
                                           - sigma[views[0]]),
            angular_range_rad=2 * math.pi,
            view_angles_rad=tuple(float(a) for a in angles[views]))
        groups.append(FocalSpotGroup(views, geometry))
    return groups


def fan_geometry(scan: HelicalScan, image: ImageGrid, ffs: str = "native") -> FanBeamGeometry:
    """The one ``FanBeamGeometry`` of all rebinned views; ValueError when the focal spots have
    different geometries (``ffs="native"`` with an in-plane flying focal spot): use
    ``fan_geometries`` and ``reconstruct`` then."""
    groups = fan_geometries(scan, image, ffs)
    if len(groups) != 1:
        raise ValueError(f"The rebinned views have {len(groups)} focal-spot geometries "
                         f"(ffs={ffs!r}); use fan_geometries() and reconstruct(), or rebin with "
                         "ffs='common' for one geometry.")
    return groups[0].geometry


def reconstruct(sinograms: np.ndarray | jax.Array, groups: Sequence[FocalSpotGroup],
                window: str = "hann") -> jax.Array:
    """FBP of all rebinned views: the view-weighted mean of each focal-spot group's FBP (the FBP
    of all views, as FBP weighs each view by 2 pi / views).

    Args:
      sinograms: [S, N, channels] or [N, channels].
      groups: ``fan_geometries(scan, image, ffs)``.

    Returns:
      [S, H, W] (or [H, W]) attenuation images, 1/mm.
    """
    from consensus_jax.ct.fbp import fbp  # noqa: PLC0415 - fbp imports nothing of this module

    sinograms = jnp.asarray(sinograms, jnp.float32)
    total = sum(g.views.size for g in groups)
    return sum(fbp(sinograms[..., g.views, :], g.geometry, window) * (g.views.size / total)
               for g in groups)


def _ssr_coordinates(sigma: jax.Array, dbeta: jax.Array, drho: jax.Array, dz: jax.Array,
                     z_rel: jax.Array, num_channels: int, d_so: float, d_sd: float,
                     fan_step: float, row_step: float, c0: float, r0: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Where each output ray is read on its helical view, and its path-length weight.

    Args:
      sigma: [N] channel shift of each view's output grid (``channel_shifts``).
      dbeta, drho, dz: [N] focal-spot offsets of the views read (rad, mm, mm).
      z_rel: [N] slice position minus each view's focal-centre table position, z - z_v (mm).

    Returns:
      (row, channel, weight), each [N, C]: fractional row and channel, and cos(inclination).
    """
    k = jnp.arange(num_channels, dtype=jnp.float32)[None, :]
    gamma = (k - c0 - sigma[:, None]) * fan_step
    db, dr, dz, z_rel = dbeta[:, None], drho[:, None], dz[:, None], z_rel[:, None]
    channel, t = _detector_channel(gamma, db, dr, d_so, d_sd, fan_step, c0)
    h = (z_rel - dz) * t / ((d_so + dr) * jnp.cos(gamma))
    row = r0 + (dz + h) / row_step
    weight = t / jnp.sqrt(t * t + h * h)
    return row, channel, weight


def _bilinear(projections: jax.Array, slot: jax.Array, row: jax.Array,
              channel: jax.Array) -> jax.Array:
    """projections [n, R, C] of view ``slot`` [N] at (row, channel) [N, C], edge values outside."""
    _, num_rows, num_channels = projections.shape
    r0 = jnp.clip(jnp.floor(row), 0, num_rows - 2)
    c0 = jnp.clip(jnp.floor(channel), 0, num_channels - 2)
    fr = jnp.clip(row - r0, 0.0, 1.0)
    fc = jnp.clip(channel - c0, 0.0, 1.0)
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    s = slot[:, None]
    a = projections[s, r0, c0]
    b = projections[s, r0, c0 + 1]
    c = projections[s, r0 + 1, c0]
    d = projections[s, r0 + 1, c0 + 1]
    return (1 - fr) * ((1 - fc) * a + fc * b) + fr * ((1 - fc) * c + fc * d)


_STATIC = ("num_channels", "d_so", "d_sd", "fan_step", "row_step", "c0", "r0")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _rebin_slice(projections: jax.Array, slot: jax.Array, sigma: jax.Array, dbeta: jax.Array,
                 drho: jax.Array, dz: jax.Array, z_rel: jax.Array, **static: float) -> jax.Array:
    row, channel, weight = _ssr_coordinates(sigma, dbeta, drho, dz, z_rel, **static)
    return _bilinear(projections, slot, row, channel) * weight


def _slice_inputs(scan: HelicalScan, view_indices: np.ndarray, z_mm: float,
                  ffs: str) -> dict[str, np.ndarray]:
    views = select_views(scan, z_mm)
    slot = np.searchsorted(view_indices, views)
    if np.any(slot >= view_indices.size) or np.any(view_indices[np.minimum(
            slot, view_indices.size - 1)] != views):
        missing = np.setdiff1d(views, view_indices)
        raise ValueError(f"Slice z = {z_mm:.3f} mm reads helical views that were not given "
                         f"({missing.size} missing, e.g. {missing[:5].tolist()}); load "
                         "views_needed(scan, z_mm).")
    zero = np.zeros(views.size)
    pick = (lambda a: a[views].astype(np.float64)) if ffs != "ignore" else (lambda a: zero)
    return {"slot": slot.astype(np.int32), "sigma": channel_shifts(scan, views, ffs),
            "dbeta": pick(scan.ffs_angular_rad), "drho": pick(scan.ffs_radial_mm),
            "dz": pick(scan.ffs_axial_mm),
            "z_rel": z_mm - scan.table_positions_mm[views].astype(np.float64)}


def _static(scan: HelicalScan) -> dict[str, float]:
    return {"num_channels": int(scan.num_channels),
            "d_so": float(scan.source_to_isocenter_mm), "d_sd": float(scan.source_to_detector_mm),
            "fan_step": float(scan.fan_angle_spacing_rad), "row_step": float(scan.row_spacing_mm),
            "c0": float(scan.central_channel), "r0": float(scan.central_row)}


_PER_VIEW = ("sigma", "dbeta", "drho", "dz", "z_rel")


def _check_inputs(projections_shape: tuple[int, ...], scan: HelicalScan,
                  view_indices: np.ndarray) -> None:
    expected = (view_indices.size, scan.num_rows, scan.num_channels)
    if tuple(projections_shape) != expected:
        raise ValueError(f"rebin: projections have shape {tuple(projections_shape)}, expected "
                         f"{expected} (one [rows, channels] view per entry of view_indices).")
    if view_indices.size and (np.any(np.diff(view_indices) <= 0) or view_indices[0] < 0
                              or view_indices[-1] >= scan.num_views):
        raise ValueError("rebin: view_indices must be increasing indices into the scan's "
                         f"{scan.num_views} views.")


def rebin(projections: np.ndarray | jax.Array, scan: HelicalScan, view_indices: np.ndarray,
          z_mm: Sequence[float], ffs: str = "native") -> jax.Array:
    """Fan-beam sinograms of the slices ``z_mm`` from helical projections (SSR, full scan).

    Args:
      projections: [n, rows, channels] line integrals of the helical views ``view_indices``
        (rows increasing towards +z, channels increasing with the fan angle).
      scan: the helical geometry of all views.
      view_indices: [n] increasing view indices of ``projections``; must include
        ``views_needed(scan, z_mm)``.
      z_mm: slice positions (mm), each inside ``slice_range_mm(scan)``.
      ffs: flying-focal-spot handling, "native", "common" or "ignore" (module docstring).

    Returns:
      [S, N, channels] float32 sinograms on ``fan_geometries(scan, image, ffs)``.
    """
    view_indices = np.asarray(view_indices, dtype=np.int64)
    _check_inputs(np.shape(projections), scan, view_indices)
    _check_periodic(scan, ffs)
    projections = jnp.asarray(projections, jnp.float32)
    static = _static(scan)
    out = []
    for z in z_mm:
        inp = _slice_inputs(scan, view_indices, float(z), ffs)
        out.append(_rebin_slice(projections, jnp.asarray(inp["slot"]),
                                *(jnp.asarray(inp[k], jnp.float32) for k in _PER_VIEW),
                                **static))
    return jnp.stack(out)


def rows_outside_fraction(scan: HelicalScan, z_mm: float, ffs: str = "native") -> float:
    """Fraction of the output samples of slice ``z_mm`` whose row lies beyond the detector's
    outer row centres (read as the edge row: the data full-scan SSR lacks at high pitch)."""
    inp = _slice_inputs(scan, np.arange(scan.num_views), z_mm, ffs)
    row, _, _ = _ssr_coordinates(*(jnp.asarray(inp[k], jnp.float32) for k in _PER_VIEW),
                                 **_static(scan))
    row = np.asarray(row)
    return float(np.mean((row < 0) | (row > scan.num_rows - 1)))


def numpy_rebin_reference(projections: np.ndarray, scan: HelicalScan, view_indices: np.ndarray,
                          z_mm: Sequence[float], ffs: str = "native",
                          output_views: Sequence[int] | None = None) -> np.ndarray:
    """``rebin`` written out with Python loops over slices, views and channels, scalar math.

    The independent reference for ``rebin``'s values and speed: it chooses each view by
    scanning the rotations, and solves the detector-arc intersection and the bilinear
    interpolation one ray at a time in float64. ``output_views`` restricts it to some output views
    (the others stay 0), to time a fraction of a slice.

    Returns:
      [S, N, channels] float64.
    """
    _check_mode(ffs)
    proj = np.asarray(projections, dtype=np.float64)
    index_of = {int(v): i for i, v in enumerate(view_indices)}
    n, num_rows, num_channels = scan.views_per_rotation, scan.num_rows, scan.num_channels
    d_so, d_sd = float(scan.source_to_isocenter_mm), float(scan.source_to_detector_mm)
    dgamma = scan.fan_angle_spacing_rad
    c_0, r_0 = float(scan.central_channel), float(scan.central_row)
    increasing = scan.source_angles_rad[-1] >= scan.source_angles_rad[0]

    def hit(g: float, db: float, rho: float) -> tuple[float, float]:
        """(channel, t) where the ray from the source at fan angle g meets the detector arc."""
        sx, sy = rho * math.cos(db) - d_so, rho * math.sin(db)  # source minus focal centre
        ux = -math.cos(g) * math.cos(db) - math.sin(g) * math.sin(db)
        uy = -math.cos(g) * math.sin(db) + math.sin(g) * math.cos(db)
        b = sx * ux + sy * uy
        t = -b + math.sqrt(b * b - (sx * sx + sy * sy) + d_sd * d_sd)
        return c_0 + math.atan2(sy + t * uy, -(sx + t * ux)) / dgamma, t

    out = np.zeros((len(z_mm), n, num_channels))
    for s, z in enumerate(z_mm):
        for i in (range(n) if output_views is None else output_views):
            j = i if increasing else n - 1 - i
            best, best_dist = j, math.inf
            for v in range(j, scan.num_views, n):
                dist = abs(float(scan.table_positions_mm[v]) - z)
                if dist < best_dist:
                    best, best_dist = v, dist
            view = proj[index_of[best]]
            db = dr = dz = 0.0
            if ffs != "ignore":
                db = float(scan.ffs_angular_rad[best])
                dr = float(scan.ffs_radial_mm[best])
                dz = float(scan.ffs_axial_mm[best])
            rho = d_so + dr
            sigma = hit(0.0, db, rho)[0] - c_0 if ffs == "native" else 0.0
            for k in range(num_channels):
                g = (k - c_0 - sigma) * dgamma
                channel, t = hit(g, db, rho)
                h = (z - float(scan.table_positions_mm[best]) - dz) * t / (rho * math.cos(g))
                row = r_0 + (dz + h) / scan.row_spacing_mm
                r0 = min(max(math.floor(row), 0), num_rows - 2)
                c0 = min(max(math.floor(channel), 0), num_channels - 2)
                fr = min(max(row - r0, 0.0), 1.0)
                fc = min(max(channel - c0, 0.0), 1.0)
                value = ((1 - fr) * ((1 - fc) * view[r0, c0] + fc * view[r0, c0 + 1])
                         + fr * ((1 - fc) * view[r0 + 1, c0] + fc * view[r0 + 1, c0 + 1]))
                out[s, i, k] = value * t / math.sqrt(t * t + h * h)
    return out
