"""CT scan geometries: the image grid, parallel-beam and fan-beam (equiangular detector) scanners.

Coordinate conventions (shared by the projector, FBP and the tests):
- An image is an array [H, W] with H = W = ``size_px``. Row ``i`` and column ``j`` sit at the
  pixel centre ``x = (j - (W - 1) / 2) * pixel_size_mm`` (to the right) and
  ``y = ((H - 1) / 2 - i) * pixel_size_mm`` (upwards), so the grid is centred on the isocentre.
- Parallel beam, view angle ``theta`` (radians): detector bin ``k`` measures the line
  ``x cos(theta) + y sin(theta) = t_k`` with ``t_k = (k - (n - 1) / 2) * detector_spacing_mm``.
  This is scikit-image's ``radon``/``iradon`` convention when the image size is odd.
- Fan beam, view angle ``beta``: the source sits at ``D (cos beta, sin beta)`` with ``D`` the
  source-to-isocentre distance; channel ``k`` of the equiangular (cylindrical) detector sees the ray
  leaving the source at fan angle ``gamma_k = (k - (n - 1) / 2 + offset) * delta_gamma`` from the
  central ray (direction ``-(cos beta, sin beta)``), positive towards ``(-sin beta, cos beta)``.

All view angles are in radians, all lengths in millimetres.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

_Geometry = TypeVar("_Geometry", "ParallelBeamGeometry", "FanBeamGeometry")


def _require_positive(owner: str, name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{owner}.{name} must be positive, got {value!r}; pass a value > 0.")


def _check_view_angles(owner: str, num_views: int, angular_range_rad: float,
                       view_angles_rad: tuple[float, ...] | None) -> None:
    if num_views < 1:
        raise ValueError(f"{owner}.num_views must be >= 1, got {num_views}.")
    if not 0 < angular_range_rad <= 2 * math.pi + 1e-9:
        raise ValueError(f"{owner}.angular_range_rad must be in (0, 2*pi], got "
                         f"{angular_range_rad!r}; use math.pi or 2 * math.pi.")
    if view_angles_rad is not None and len(view_angles_rad) != num_views:
        raise ValueError(f"{owner}.view_angles_rad has {len(view_angles_rad)} angles but "
                         f"num_views is {num_views}; make them agree (or leave view_angles_rad "
                         "None for evenly spaced views).")


def _view_angles(num_views: int, angular_range_rad: float,
                 view_angles_rad: tuple[float, ...] | None) -> np.ndarray:
    if view_angles_rad is not None:
        return np.asarray(view_angles_rad, dtype=np.float64)
    return np.arange(num_views, dtype=np.float64) * (angular_range_rad / num_views)


def _subset(geometry: _Geometry, view_indices: Sequence[int] | np.ndarray) -> _Geometry:
    idx = np.asarray(view_indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"subset(view_indices): expected a non-empty 1-D integer array, got "
                         f"shape {idx.shape} dtype {idx.dtype}.")
    if idx.min() < 0 or idx.max() >= geometry.num_views:
        raise ValueError(f"subset(view_indices): indices must lie in [0, {geometry.num_views}), "
                         f"got min {idx.min()} max {idx.max()}.")
    angles = geometry.view_angles()[idx]
    return dataclasses.replace(geometry, num_views=int(idx.size),
                               view_angles_rad=tuple(float(a) for a in angles))


@dataclasses.dataclass(frozen=True)
class ImageGrid:
    """A square reconstruction grid centred on the isocentre.

    Attributes:
      size_px: number of pixels along each side (H = W).
      pixel_size_mm: pixel pitch in mm (the DICOM PixelSpacing).
    """

    size_px: int
    pixel_size_mm: float

    def __post_init__(self):
        if self.size_px < 1:
            raise ValueError(f"ImageGrid.size_px must be >= 1, got {self.size_px}.")
        _require_positive("ImageGrid", "pixel_size_mm", self.pixel_size_mm)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return (self.size_px, self.size_px)

    def pixel_centres_mm(self) -> np.ndarray:
        """Pixel-centre coordinates along one axis, [size_px] in mm, increasing from -to +."""
        return (np.arange(self.size_px) - (self.size_px - 1) / 2.0) * self.pixel_size_mm

    def fov_mask(self, radius_mm: float | None = None) -> np.ndarray:
        """Boolean [H, W] disk of pixels whose centres lie within ``radius_mm`` of the isocentre.

        The default radius is the inscribed circle, half the grid width.
        """
        r = self.size_px * self.pixel_size_mm / 2.0 if radius_mm is None else radius_mm
        c = self.pixel_centres_mm()
        return (c[None, :] ** 2 + c[:, None] ** 2) <= r ** 2


@dataclasses.dataclass(frozen=True)
class ParallelBeamGeometry:
    """Parallel-beam scan: ``num_views`` projections of ``num_detectors`` line integrals.

    Attributes:
      image: the reconstruction grid.
      num_views: number of projections.
      num_detectors: detector bins per projection.
      detector_spacing_mm: bin pitch in mm.
      angular_range_rad: range covered by evenly spaced views, radians (pi or 2 pi); views sit at
        ``v * angular_range_rad / num_views``.
      view_angles_rad: explicit view angles in radians (overrides even spacing); ``subset`` sets it.
        FBP weighs each view by ``pi / num_views``, which assumes the views cover the angular
        range evenly (true for the full set and for odd/even or interleaved subsets).
    """

    image: ImageGrid
    num_views: int
    num_detectors: int
    detector_spacing_mm: float
    angular_range_rad: float = math.pi
    view_angles_rad: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.num_detectors < 1:
            raise ValueError("ParallelBeamGeometry.num_detectors must be >= 1, got "
                             f"{self.num_detectors}.")
        _require_positive("ParallelBeamGeometry", "detector_spacing_mm", self.detector_spacing_mm)
        _check_view_angles("ParallelBeamGeometry", self.num_views, self.angular_range_rad,
                           self.view_angles_rad)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """(views, detectors)."""
        return (self.num_views, self.num_detectors)

    def view_angles(self) -> np.ndarray:
        """View angles theta, [num_views] radians (float64)."""
        return _view_angles(self.num_views, self.angular_range_rad, self.view_angles_rad)

    def detector_positions_mm(self) -> np.ndarray:
        """Signed distance t of each bin from the centre ray, [num_detectors] mm."""
        return (np.arange(self.num_detectors) - (self.num_detectors - 1) / 2.0) * (
            self.detector_spacing_mm)

    def subset(self, view_indices: Sequence[int] | np.ndarray) -> ParallelBeamGeometry:
        """The same scanner restricted to the views ``view_indices`` (e.g. the odd views)."""
        return _subset(self, view_indices)


def _default_fan_image() -> ImageGrid:
    return ImageGrid(size_px=512, pixel_size_mm=0.7)


@dataclasses.dataclass(frozen=True)
class FanBeamGeometry:
    """Full-scan fan-beam geometry with an equiangular (cylindrical) detector.

    Defaults follow the LDCT Grand Challenge scanner (Siemens Definition AS+, one detector row):
    595 mm source-to-isocentre, 1085.6 mm source-to-detector, 736 channels of 1.2858 mm on the
    detector arc (fan-angle pitch 1.2858 / 1085.6 rad, a 502 mm field of view), 2304 views per
    rotation, and a 512 x 512 image at 0.7 mm.

    Attributes:
      image: the reconstruction grid.
      num_views: projections per rotation.
      num_detectors: detector channels.
      source_to_isocenter_mm: D, source-to-rotation-axis distance in mm.
      source_to_detector_mm: source-to-detector-arc distance in mm.
      detector_spacing_mm: channel pitch on the detector arc in mm.
      detector_offset_channels: shift of the central ray from the detector centre, in channels
        (a quarter-detector offset is 0.25).
      angular_range_rad: range of evenly spaced source angles; FBP needs a full scan (2 pi).
      view_angles_rad: explicit source angles in radians (overrides even spacing).
    """

    image: ImageGrid = dataclasses.field(default_factory=_default_fan_image)
    num_views: int = 2304
    num_detectors: int = 736
    source_to_isocenter_mm: float = 595.0
    source_to_detector_mm: float = 1085.6
    detector_spacing_mm: float = 1.2858
    detector_offset_channels: float = 0.0
    angular_range_rad: float = 2 * math.pi
    view_angles_rad: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.num_detectors < 1:
            raise ValueError(f"FanBeamGeometry.num_detectors must be >= 1, got "
                             f"{self.num_detectors}.")
        for name in ("source_to_isocenter_mm", "source_to_detector_mm", "detector_spacing_mm"):
            _require_positive("FanBeamGeometry", name, getattr(self, name))
        if self.source_to_detector_mm <= self.source_to_isocenter_mm:
            raise ValueError("FanBeamGeometry.source_to_detector_mm "
                             f"({self.source_to_detector_mm}) must exceed source_to_isocenter_mm "
                             f"({self.source_to_isocenter_mm}).")
        _check_view_angles("FanBeamGeometry", self.num_views, self.angular_range_rad,
                           self.view_angles_rad)
        half_diagonal = math.sqrt(2.0) * self.image.size_px * self.image.pixel_size_mm / 2.0
        if half_diagonal >= self.source_to_isocenter_mm:
            raise ValueError(f"FanBeamGeometry.image ({self.image.size_px} px at "
                             f"{self.image.pixel_size_mm} mm) reaches the source circle "
                             f"(D = {self.source_to_isocenter_mm} mm); use a smaller grid.")
        if abs(self.fan_angles_rad()).max() >= math.pi / 2:
            raise ValueError("FanBeamGeometry: the fan spans more than pi; reduce num_detectors "
                             "or detector_spacing_mm.")

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """(views, detectors)."""
        return (self.num_views, self.num_detectors)

    @property
    def fan_angle_spacing_rad(self) -> float:
        """Angular pitch of the channels seen from the source, radians."""
        return self.detector_spacing_mm / self.source_to_detector_mm

    @property
    def fov_radius_mm(self) -> float:
        """Radius of the circle every view covers, mm."""
        return self.source_to_isocenter_mm * math.sin(float(np.abs(self.fan_angles_rad()).max()))

    def view_angles(self) -> np.ndarray:
        """Source angles beta, [num_views] radians (float64)."""
        return _view_angles(self.num_views, self.angular_range_rad, self.view_angles_rad)

    def fan_angles_rad(self) -> np.ndarray:
        """Fan angle gamma of each channel, [num_detectors] radians (float64)."""
        k = np.arange(self.num_detectors) - (self.num_detectors - 1) / 2.0
        return (k + self.detector_offset_channels) * self.fan_angle_spacing_rad

    def subset(self, view_indices: Sequence[int] | np.ndarray) -> FanBeamGeometry:
        """The same scanner restricted to the views ``view_indices`` (e.g. the odd views)."""
        return _subset(self, view_indices)


Geometry = ParallelBeamGeometry | FanBeamGeometry


def quarter_turn_groups(angles: np.ndarray) -> int:
    """The largest G in (4, 2, 1) such that view v + k V/G sits at angle(v) + k pi/2 for all
    v < V/G and k < G (angles [V] in radians).

    The square grid is unchanged by a quarter turn about the isocentre, so such views can share
    their ray or pixel geometry: 4 for a full scan with V divisible by 4 (also its odd/even
    halves when V / 2 is), 2 for a parallel half scan with an even V, 1 otherwise.
    """
    for groups in (4, 2):
        if angles.size % groups == 0 and angles.size >= groups:
            q = angles.size // groups
            step = np.angle(np.exp(1j * (angles[q:] - angles[:-q] - np.pi / 2)))
            if np.all(np.abs(step) < 1e-9):
                return groups
    return 1


def ray_lines(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Every measured ray as a line ``x . normal = offset``, for analytic projections and checks.

    Returns:
      normals: [views, detectors, 2] unit normals (x, y) of the rays.
      offsets_mm: [views, detectors] signed distances of the rays from the isocentre, mm.
    """
    angles = geometry.view_angles()[:, None]
    if isinstance(geometry, ParallelBeamGeometry):
        t = geometry.detector_positions_mm()[None, :]
        theta = np.broadcast_to(angles, (geometry.num_views, geometry.num_detectors))
        normals = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
        return normals, np.broadcast_to(t, theta.shape).copy()
    gamma = geometry.fan_angles_rad()[None, :]
    d = geometry.source_to_isocenter_mm
    # Ray direction: cos(gamma) * (-(cos b, sin b)) + sin(gamma) * (-sin b, cos b).
    dx = -np.cos(gamma) * np.cos(angles) - np.sin(gamma) * np.sin(angles)
    dy = -np.cos(gamma) * np.sin(angles) + np.sin(gamma) * np.cos(angles)
    normals = np.stack([-dy, dx], axis=-1)
    source = np.stack([d * np.cos(angles), d * np.sin(angles)], axis=-1)
    offsets = np.sum(normals * source, axis=-1)
    return normals, offsets


@dataclasses.dataclass(frozen=True)
class Ellipse:
    """One ellipse of an analytic phantom, with a closed-form projection.

    The density is ``value * (1 - rho^2)^profile_power`` inside the ellipse, where ``rho`` is the
    normalised elliptical radius (0 at the centre, 1 on the boundary): power 0 is a flat ellipse
    with a sharp edge, power 2 a smooth bump whose edge is continuous to first order.

    Attributes:
      centre_mm: (x, y) of the centre, mm.
      semi_axes_mm: (a, b) semi-axes, mm, along the ellipse's own axes.
      rotation_rad: angle of the ``a`` axis from the x axis, radians.
      value: peak density (e.g. attenuation in 1/mm, or HU for an image-only phantom).
      profile_power: m in ``(1 - rho^2)^m``, an integer >= 0.
    """

    centre_mm: tuple[float, float]
    semi_axes_mm: tuple[float, float]
    rotation_rad: float
    value: float
    profile_power: int = 0


def ellipse_image(ellipses: Sequence[Ellipse], grid: ImageGrid,
                  supersampling: int = 1) -> np.ndarray:
    """Sum of ellipse densities on ``grid``, [H, W] float64, averaged over supersampling^2 points
    per pixel (1: the value at the pixel centre)."""
    offsets = (np.arange(supersampling) - (supersampling - 1) / 2.0) / supersampling
    c = grid.pixel_centres_mm()
    fine = (c[:, None] + offsets[None, :] * grid.pixel_size_mm).reshape(-1)
    x, y = np.meshgrid(fine, fine[::-1])
    image = np.zeros_like(x)
    for e in ellipses:
        cos_r, sin_r = np.cos(e.rotation_rad), np.sin(e.rotation_rad)
        dx, dy = x - e.centre_mm[0], y - e.centre_mm[1]
        u = (dx * cos_r + dy * sin_r) / e.semi_axes_mm[0]
        v = (-dx * sin_r + dy * cos_r) / e.semi_axes_mm[1]
        inside = np.clip(1.0 - u ** 2 - v ** 2, 0.0, None)
        image += e.value * np.where(inside > 0, inside ** e.profile_power, 0.0)
    n, s = grid.size_px, supersampling
    return image.reshape(n, s, n, s).mean(axis=(1, 3))


def ellipse_line_integrals(ellipses: Sequence[Ellipse], geometry: Geometry) -> np.ndarray:
    """Exact line integrals of the ellipse phantom along every ray, [views, detectors] float64.

    Along a line at distance ``t`` (from the ellipse centre) with unit normal at angle ``phi`` to
    the ellipse's ``a`` axis, ``r^2 = a^2 cos^2 phi + b^2 sin^2 phi`` and the integral of
    ``(1 - rho^2)^m`` is ``(a b / r) C_m (1 - t^2 / r^2)^(m + 1/2)`` with
    ``C_m = sqrt(pi) Gamma(m + 1) / Gamma(m + 3/2)`` (C_0 = 2: the chord length).
    """
    normals, offsets = ray_lines(geometry)
    total = np.zeros(offsets.shape)
    for e in ellipses:
        a, b = e.semi_axes_mm
        m = e.profile_power
        c_m = math.sqrt(math.pi) * math.gamma(m + 1) / math.gamma(m + 1.5)
        t = offsets - (normals[..., 0] * e.centre_mm[0] + normals[..., 1] * e.centre_mm[1])
        phi = np.arctan2(normals[..., 1], normals[..., 0]) - e.rotation_rad
        r2 = (a * np.cos(phi)) ** 2 + (b * np.sin(phi)) ** 2
        inside = np.clip(1.0 - t ** 2 / r2, 0.0, None)
        total += e.value * (a * b / np.sqrt(r2)) * c_m * inside ** (m + 0.5)
    return total
