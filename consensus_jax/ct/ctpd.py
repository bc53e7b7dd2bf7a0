"""Reader of raw helical CT projections in the DICOM-CT-PD format (one file per view).

The format: B. Chen et al., "Development and evaluation of an open data format for CT projection
data", Med. Phys. 42(12), 2015; the public data set of C. McCollough et al. / T. R. Moen et al.,
"Low-dose CT image and projection dataset", Med. Phys. 48(2), 2021 (full- and quarter-dose
series per patient, Siemens SOMATOM Definition AS+ / Flash, cylindrical detector).

``index_series(folder)`` reads every header once (without pixel data) into a ``ProjectionIndex``:
the file of each view in acquisition order, each view's source angle, table position and
flying-focal-spot offsets, and the scanner constants, as a ``rebin.HelicalScan``.
``read_views(index, views)`` reads the pixel data of the views asked for, nothing else, as line
integrals ``stored * RescaleSlope + RescaleIntercept`` [views, rows, channels]; ``rebin_series``
reads the views some slices need and rebins them to fan-beam sinograms. ``check_pair`` refuses a
quarter-dose series that does not match its full-dose series view by view.

Private tags read (group, element; the float values are little-endian float32 bytes, which
pydicom returns undecoded for these unknown private tags):

==============  =====================================  ================================
(7029,1002)     DetectorElementTransverseSpacing       channel pitch at the detector, mm
(7029,1006)     DetectorElementAxialSpacing            row pitch at the detector, mm
(7029,1010)     NumberofDetectorRows                   rows
(7029,1011)     NumberofDetectorColumns                channels
(7031,1001)     DetectorFocalCenterAngularPosition     phi, rad, per view
(7031,1002)     DetectorFocalCenterAxialPosition       table position z, mm, per view
(7031,1003)     DetectorFocalCenterRadialDistance      source to isocentre, mm
(7031,1031)     ConstantRadialDistance                 source to detector, mm
(7031,1033)     DetectorCentralElement                 (column, row), 1-based
(7033,100B)     SourceAngularPositionShift             FFS dphi, rad, per view
(7033,100C)     SourceAxialPositionShift               FFS dz, mm, per view
(7033,100D)     SourceRadialDistanceShift              FFS drho, mm, per view
(7033,100E)     FlyingFocalSpotMode                    FFSNONE, FFSZ, FFSXY, FFSXYZ
(7033,1013)     NumberofSourceAngularSteps             optional; only reported
(7041,1001)     WaterAttenuationCoefficient            mu_w, 1/mm (decimal string)
(7029,100B)     DetectorShape                          optional; must be CYLINDRICAL
==============  =====================================  ================================

(7033,100B) is read as the angular and (7033,100C) as the axial FFS offset, as in Moen et al. 2021
and most readers (one public tag dictionary swaps them); an "angular" offset over 0.05 rad (3 cm
at the isocentre, far beyond a focal-spot shift) is refused as a sign of swapped tags.

Orientation, the choices made (from the format's description and the public readers, which all
negate the stored angle and flip one detector axis; checked here only against this project's
own fixture writer, data_prep/ctpd.py, which follows the same reading: a check against the
vendor's reconstruction of a real series is still to be done):
- The stored angle phi is measured in the DICOM patient frame (y towards the patient's back,
  down in the displayed image); the project's frame (``geometry.py``) has y up, so the source
  angle is ``beta = -phi`` (and the FFS angular offset ``dbeta = -dphi``), unwrapped along the
  series.
- The pixel buffer holds [Rows, Columns] = [channels, detector rows] (the manual's layout:
  DICOM Rows is the channel count); files whose Rows equal the detector-row count and Columns the
  channel count are read transposed. A square detector is read in the manual's layout.
- The stored channel index runs against the project's fan angle (stored channel order is
  flipped, as in the public readers) and the stored row index runs towards -z (flipped): the
  returned arrays have rows increasing towards +z and channels increasing with the fan angle
  gamma, the orientation ``rebin`` expects. The central element (1-based, stored order) becomes
  ``c_0 = channels - column`` and ``r_0 = rows - row`` (0-based, returned order).
- The orientation was established for Siemens files; series of another Manufacturer are read the
  same way with a warning (some readers flip the channels only for Siemens).

Views per rotation are derived from the angles (``NumberofSourceAngularSteps`` is ambiguous
between focal-spot positions and files). HU of a reconstruction: ``1000 (mu - mu_w) / mu_w``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from consensus_jax.ct.geometry import ImageGrid
from consensus_jax.ct.rebin import (
    FocalSpotGroup,
    HelicalScan,
    fan_geometries,
    rebin,
    views_needed,
)
from consensus_jax.errors import InputError, MissingInputError

# (tag, name, kind): kind "f" float32(s), "i" unsigned integer, "s" text, "d" decimal string.
CHANNEL_SPACING = (0x70291002, "DetectorElementTransverseSpacing", "f")
ROW_SPACING = (0x70291006, "DetectorElementAxialSpacing", "f")
NUM_ROWS = (0x70291010, "NumberofDetectorRows", "i")
NUM_CHANNELS = (0x70291011, "NumberofDetectorColumns", "i")
DETECTOR_SHAPE = (0x7029100B, "DetectorShape", "s")
FOCAL_ANGLE = (0x70311001, "DetectorFocalCenterAngularPosition", "f")
FOCAL_AXIAL = (0x70311002, "DetectorFocalCenterAxialPosition", "f")
FOCAL_RADIUS = (0x70311003, "DetectorFocalCenterRadialDistance", "f")
DETECTOR_RADIUS = (0x70311031, "ConstantRadialDistance", "f")
CENTRAL_ELEMENT = (0x70311033, "DetectorCentralElement", "f")
FFS_ANGULAR = (0x7033100B, "SourceAngularPositionShift", "f")
FFS_AXIAL = (0x7033100C, "SourceAxialPositionShift", "f")
FFS_RADIAL = (0x7033100D, "SourceRadialDistanceShift", "f")
FFS_MODE = (0x7033100E, "FlyingFocalSpotMode", "s")
ANGULAR_STEPS = (0x70331013, "NumberofSourceAngularSteps", "i")
WATER = (0x70411001, "WaterAttenuationCoefficient", "d")

# Scanner constants: the same in every file of a series.
_CONSTANT_TAGS = (CHANNEL_SPACING, ROW_SPACING, NUM_ROWS, NUM_CHANNELS, FOCAL_RADIUS,
                  DETECTOR_RADIUS, CENTRAL_ELEMENT, WATER, FFS_MODE)
_PER_VIEW_TAGS = (FOCAL_ANGLE, FOCAL_AXIAL, FFS_ANGULAR, FFS_AXIAL, FFS_RADIAL)
REQUIRED_TAGS = _CONSTANT_TAGS + _PER_VIEW_TAGS
_PRIVATE_GROUPS = (0x7029, 0x7031, 0x7033, 0x7041)
_MAX_FFS_ANGLE_RAD = 0.05
_PROGRESS_MIN_VIEWS = 256


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _raw(ds: pydicom.Dataset, spec: tuple[int, str, str], path: Path) -> object:
    tag, name, _ = spec
    if tag not in ds:
        raise InputError(f"{path}: private tag {_tag_text(tag)} {name} is missing; a DICOM-CT-PD "
                         "projection file must have it. Use the series as exported with its "
                         "private tags (anonymisers that strip private tags remove it).")
    return ds[tag].value


def _bad(path: Path, spec: tuple[int, str, str], value: object, expected: str) -> InputError:
    return InputError(f"{path}: private tag {_tag_text(spec[0])} {spec[1]} holds {value!r}, "
                      f"expected {expected}. Repair the header or re-export the series.")


def _floats(ds: pydicom.Dataset, spec: tuple[int, str, str], path: Path,
            count: int = 1) -> tuple[float, ...]:
    value = _raw(ds, spec, path)
    if isinstance(value, bytes | bytearray):
        if len(value) != 4 * count:
            raise _bad(path, spec, value[:32], f"{count} little-endian float32 value(s) "
                       f"({4 * count} bytes)")
        out = struct.unpack(f"<{count}f", value)
    else:
        try:
            out = tuple(float(v) for v in (value if isinstance(value, Sequence | np.ndarray)
                                           and not isinstance(value, str) else [value]))
        except (TypeError, ValueError):
            raise _bad(path, spec, value, f"{count} number(s)") from None
    if len(out) != count or not all(math.isfinite(v) for v in out):
        raise _bad(path, spec, out, f"{count} finite number(s)")
    return out


def _integer(ds: pydicom.Dataset, spec: tuple[int, str, str], path: Path) -> int:
    value = _raw(ds, spec, path)
    if isinstance(value, bytes | bytearray):
        # Written as US (2 bytes) or UL (4 bytes); a float32 written instead is also accepted.
        if len(value) == 2:
            return struct.unpack("<H", value)[0]
        if len(value) == 4:
            number = struct.unpack("<I", value)[0]
            if number > 1_000_000:
                number = struct.unpack("<f", value)[0]
            if number == int(number) and number > 0:
                return int(number)
        raise _bad(path, spec, value[:32], "a positive integer (US)")
    try:
        number = float(value[0] if isinstance(value, Sequence) and not isinstance(value, str)
                       else value)
    except (TypeError, ValueError, IndexError):
        raise _bad(path, spec, value, "a positive integer") from None
    if number != int(number) or number <= 0:
        raise _bad(path, spec, value, "a positive integer")
    return int(number)


def _text(ds: pydicom.Dataset, spec: tuple[int, str, str], path: Path) -> str:
    value = _raw(ds, spec, path)
    if isinstance(value, bytes | bytearray):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise _bad(path, spec, value[:32], "ASCII text") from None
    return str(value).strip(" \x00").upper()


def _decimal(ds: pydicom.Dataset, spec: tuple[int, str, str], path: Path) -> float:
    value = _raw(ds, spec, path)
    if isinstance(value, bytes | bytearray):
        text = value.decode("ascii", errors="replace").strip(" \x00")
        try:
            number = float(text)
        except ValueError:
            # Not a decimal string: a float32 written as binary.
            if len(value) != 4:
                raise _bad(path, spec, value[:32], "a decimal number (DS)") from None
            number = struct.unpack("<f", value)[0]
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _bad(path, spec, value, "a decimal number") from None
    if not (math.isfinite(number) and number > 0):
        raise _bad(path, spec, number, "a positive attenuation in 1/mm")
    return number


def _read_value(ds: pydicom.Dataset, spec: tuple[int, str, str], path: Path) -> object:
    value_type = spec[2]
    if spec is CENTRAL_ELEMENT:
        return _floats(ds, spec, path, 2)
    if value_type == "f":
        return _floats(ds, spec, path)[0]
    if value_type == "i":
        return _integer(ds, spec, path)
    if value_type == "d":
        return _decimal(ds, spec, path)
    return _text(ds, spec, path)


@dataclasses.dataclass(frozen=True, eq=False)
class ProjectionIndex:
    """Everything in the headers of one DICOM-CT-PD series, views in acquisition order.

    Attributes:
      folder: the series folder.
      files: [V] file of each view.
      instance_numbers: [V] InstanceNumber of each view (or 1..V when the files have none).
      scan: the helical geometry in the project's frame (per-view beta, z, FFS offsets in
        ``scan.source_angles_rad`` etc.; scanner constants; views per rotation).
      mu_water_per_mm: water attenuation mu_w (1/mm), for HU = 1000 (mu - mu_w) / mu_w.
      ffs_mode: FlyingFocalSpotMode, e.g. "FFSNONE" or "FFSXY".
      stored_rows, stored_columns: DICOM Rows and Columns of every file.
      channels_along_rows: True when DICOM Rows counts the channels (the manual's layout).
      angular_steps_tag: NumberofSourceAngularSteps when present (not used: see the module
        docstring), else None.
      manufacturer: Manufacturer (0008,0070), "" when absent.
    """

    folder: Path
    files: tuple[Path, ...]
    instance_numbers: np.ndarray
    scan: HelicalScan
    mu_water_per_mm: float
    ffs_mode: str
    stored_rows: int
    stored_columns: int
    channels_along_rows: bool
    angular_steps_tag: int | None
    manufacturer: str

    @property
    def num_views(self) -> int:
        """V, views in the series."""
        return len(self.files)

    def hu(self, mu: np.ndarray) -> np.ndarray:
        """Attenuation (1/mm, any shape) to HU with this series' water attenuation."""
        return 1000.0 * (np.asarray(mu) - self.mu_water_per_mm) / self.mu_water_per_mm


def _has_dicom_marker(path: Path) -> bool:
    """Whether the file has the DICOM preamble's "DICM" marker at byte 128."""
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_projection_series(folder: str | Path) -> bool:
    """Whether the first DICOM file of ``folder`` carries the DICOM-CT-PD private tags (reads
    one header; files that are not DICOM are skipped; a damaged one gives False, leaving it to
    the reader that is used next to name it)."""
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue
        except Exception:  # noqa: BLE001 - a damaged file: the series reader names it
            return False
        return FOCAL_ANGLE[0] in ds
    return False


def _list_headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    if not folder.is_dir():
        raise MissingInputError(f"DICOM-CT-PD series folder {folder} does not exist or is not a "
                                "folder; pass the folder holding one series' projection files.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    found, other, plain_dicom = [], [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, struct.error, ValueError, KeyError) as err:
            if _has_dicom_marker(path):
                raise InputError(f"{path}: a DICOM file whose header cannot be read "
                                 f"({type(err).__name__}: {str(err)[:200]}); it is truncated or "
                                 "damaged. Copy it again from the source.") from err
            other.append(path.name)
            continue
        if any(tag >> 16 in _PRIVATE_GROUPS for tag in ds.keys()):
            found.append((path, ds))
        else:
            other.append(path.name)
            plain_dicom.append(path)
    if not found:
        raise MissingInputError(
            f"No DICOM-CT-PD projection files in {folder} ({len(files)} files; none is DICOM "
            f"with the DICOM-CT-PD private tags, e.g. (7031,1001) {FOCAL_ANGLE[1]}). Pass the "
            "folder of a projection series (e.g. .../full_DICOM-CT-PD), not of reconstructed "
            "images.")
    if plain_dicom:
        path = plain_dicom[0]
        raise InputError(f"{path}: a DICOM file ({os.path.getsize(path)} bytes) without the "
                         "DICOM-CT-PD private tags, among projection files: it is truncated, or "
                         "not a projection (e.g. a reconstructed image). Copy it again from the "
                         "source, or move it out of the series folder.")
    if other:
        shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        warnings.warn(f"{folder}: {len(other)} file(s) are not DICOM-CT-PD projections and were "
                      f"skipped: {shown}.", stacklevel=3)
    return found


def _layout(path: Path, rows: int, columns: int, num_rows: int, num_channels: int) -> bool:
    """Whether DICOM Rows counts the channels (True) or the detector rows (False)."""
    if (rows, columns) == (num_channels, num_rows):
        return True
    if (rows, columns) == (num_rows, num_channels):
        return False
    raise InputError(f"{path}: Rows x Columns (0028,0010/0011) = {rows} x {columns} match neither "
                     f"channels x rows nor rows x channels of {NUM_CHANNELS[1]} = {num_channels} "
                     f"and {NUM_ROWS[1]} = {num_rows}. Repair the header.")


def _check_order(files: list[Path], numbers: np.ndarray, phi: np.ndarray,
                 z: np.ndarray) -> None:
    """Views must be in acquisition order: even angle steps of one sign, table positions moving
    one way; a repeated angle and table position is a duplicated view."""
    if len(files) < 2:
        return
    step = np.angle(np.exp(1j * np.diff(phi)))
    dz = np.diff(z)
    typical, typical_dz = np.median(step), np.median(dz)
    same_place = (np.abs(step) < 1e-6) & (np.abs(dz) < 1e-4)
    bad_angle = (np.sign(step) != np.sign(typical)) | (np.abs(step) < 0.5 * abs(typical)) | (
        np.abs(step) > 1.5 * abs(typical))
    bad_z = (np.abs(dz - typical_dz) > 0.5 * abs(typical_dz) + 1e-3)
    for i in np.flatnonzero(same_place | bad_angle | bad_z):
        a, b = files[i], files[i + 1]
        where = (f"{a.name} (InstanceNumber {numbers[i]}: angle {phi[i]:.6f} rad, table "
                 f"{z[i]:.4f} mm) and {b.name} (InstanceNumber {numbers[i + 1]}: angle "
                 f"{phi[i + 1]:.6f} rad, table {z[i + 1]:.4f} mm)")
        if same_place[i]:
            raise InputError(f"{a.parent}: duplicated view: {where} have the same angle and table "
                             "position. Remove the duplicate file.")
        raise InputError(f"{a.parent}: views out of order: {where} are not consecutive views "
                         f"(typical step {typical:.6f} rad and {typical_dz:.4f} mm; files in "
                         "InstanceNumber order). Restore the series' files as exported, one "
                         "per view, numbered in acquisition order.")


def index_series(folder: str | Path) -> ProjectionIndex:
    """Reads the headers (not the pixel data) of one DICOM-CT-PD series, once.

    Raises InputError (or MissingInputError) for: a folder with no DICOM-CT-PD files; a missing
    or malformed private tag; scanner constants or Rows/Columns that change within the series;
    a file shorter than its pixel data; repeated InstanceNumbers; views out of order or
    duplicated.
    """
    folder = Path(folder)
    items = _list_headers(folder)
    first_path, first = items[0]
    constants = {spec: _read_value(first, spec, first_path) for spec in _CONSTANT_TAGS}
    num_rows, num_channels = constants[NUM_ROWS], constants[NUM_CHANNELS]
    size = (int(first.get("Rows", 0)), int(first.get("Columns", 0)))
    channels_along_rows = _layout(first_path, *size, num_rows, num_channels)
    per_view = {spec: [] for spec in _PER_VIEW_TAGS}
    numbers = []
    for path, ds in items:
        for spec in _CONSTANT_TAGS:
            value = _read_value(ds, spec, path)
            if value != constants[spec]:
                raise InputError(
                    f"{path}: private tag {_tag_text(spec[0])} {spec[1]} is {value!r} but "
                    f"{constants[spec]!r} in {first_path.name}; a series has one scanner "
                    "geometry. Keep one series per folder.")
        here = (int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
        if here != size:
            raise InputError(f"{path}: Rows x Columns (0028,0010/0011) = {here[0]} x {here[1]}, "
                             f"but {size[0]} x {size[1]} in {first_path.name}; every view of a "
                             "series has the same detector size. Keep one series per folder.")
        if os.path.getsize(path) < 2 * size[0] * size[1]:
            raise InputError(f"{path}: the file has {os.path.getsize(path)} bytes, less than its "
                             f"{size[0]} x {size[1]} 16-bit pixels; it is truncated. Copy it "
                             "again from the source.")
        for spec in _PER_VIEW_TAGS:
            per_view[spec].append(_read_value(ds, spec, path))
        numbers.append(ds.get("InstanceNumber"))
    paths = [p for p, _ in items]
    if all(n is not None for n in numbers):
        numbers = np.asarray([int(n) for n in numbers])
        order = np.argsort(numbers, kind="stable")
        repeated = np.flatnonzero(np.diff(numbers[order]) == 0)
        if repeated.size:
            i = repeated[0]
            raise InputError(f"{folder}: {paths[order[i]].name} and {paths[order[i + 1]].name} "
                             f"have the same InstanceNumber {numbers[order[i]]}; a view is "
                             "repeated. Remove the duplicate file.")
    else:  # acquisition order is the file-name order
        numbers = np.arange(1, len(paths) + 1)
        order = np.arange(len(paths))
    files = [paths[i] for i in order]
    numbers = numbers[order]
    arrays = {spec: np.asarray(v, dtype=np.float64)[order] for spec, v in per_view.items()}
    phi, z = arrays[FOCAL_ANGLE], arrays[FOCAL_AXIAL]
    _check_order(files, numbers, phi, z)
    big = np.flatnonzero(np.abs(arrays[FFS_ANGULAR]) > _MAX_FFS_ANGLE_RAD)
    if big.size:
        raise InputError(
            f"{files[big[0]]}: {_tag_text(FFS_ANGULAR[0])} {FFS_ANGULAR[1]} is "
            f"{arrays[FFS_ANGULAR][big[0]]!r} rad, far above a focal-spot shift; the angular and "
            f"axial shifts may be swapped ({_tag_text(FFS_AXIAL[0])} is read as the axial one). "
            "Check the series' tag dictionary.")
    if DETECTOR_SHAPE[0] in first and _text(first, DETECTOR_SHAPE, first_path) not in (
            "CYLINDRICAL", ""):
        raise InputError(f"{first_path}: {_tag_text(DETECTOR_SHAPE[0])} {DETECTOR_SHAPE[1]} is "
                         f"{_text(first, DETECTOR_SHAPE, first_path)!r}; only cylindrical "
                         "detectors are supported.")
    beta = -np.unwrap(phi)
    beta -= 2 * math.pi * math.floor(beta[0] / (2 * math.pi))  # first angle in [0, 2 pi)
    steps = int(round(2 * math.pi / abs(np.median(np.diff(beta))))) if len(files) > 1 else 0
    if steps < 4:
        raise InputError(f"{folder}: {len(files)} view(s) with angle steps giving {steps} views "
                         "per rotation; a DICOM-CT-PD series needs many views per rotation.")
    column, row = constants[CENTRAL_ELEMENT]
    scan = HelicalScan(
        source_angles_rad=beta, table_positions_mm=z,
        ffs_angular_rad=-arrays[FFS_ANGULAR], ffs_axial_mm=arrays[FFS_AXIAL],
        ffs_radial_mm=arrays[FFS_RADIAL], views_per_rotation=steps,
        num_rows=num_rows, num_channels=num_channels,
        channel_spacing_mm=constants[CHANNEL_SPACING], row_spacing_mm=constants[ROW_SPACING],
        source_to_isocenter_mm=constants[FOCAL_RADIUS],
        source_to_detector_mm=constants[DETECTOR_RADIUS],
        central_channel=num_channels - column, central_row=num_rows - row)
    manufacturer = str(first.get("Manufacturer", "")).strip()
    if "SIEMENS" not in manufacturer.upper():
        warnings.warn(f"{folder}: Manufacturer is {manufacturer!r}; the channel and row order "
                      "were established for Siemens DICOM-CT-PD files and may be mirrored for "
                      "this vendor. Check a reconstruction against the vendor's image.",
                      stacklevel=2)
    steps_tag = _integer(first, ANGULAR_STEPS, first_path) if ANGULAR_STEPS[0] in first else None
    return ProjectionIndex(
        folder=folder, files=tuple(files), instance_numbers=numbers, scan=scan,
        mu_water_per_mm=constants[WATER], ffs_mode=constants[FFS_MODE],
        stored_rows=size[0], stored_columns=size[1], channels_along_rows=channels_along_rows,
        angular_steps_tag=steps_tag, manufacturer=manufacturer)


def stored_to_projection(stored: np.ndarray, channels_along_rows: bool = True) -> np.ndarray:
    """A stored pixel array [Rows, Columns] -> [rows, channels], rows towards +z, channels
    along the fan angle (see the module docstring)."""
    rows_by_channels = stored.T if channels_along_rows else stored
    return rows_by_channels[::-1, ::-1]


def projection_to_stored(projection: np.ndarray) -> np.ndarray:
    """The inverse of ``stored_to_projection`` in the manual's layout: [rows, channels] ->
    [Rows = channels, Columns = rows]."""
    return np.ascontiguousarray(projection[::-1, ::-1].T)


def _pixels(path: Path, index: ProjectionIndex) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, struct.error, ValueError) as err:
        raise InputError(f"{path}: cannot read the file ({type(err).__name__}: "
                         f"{str(err)[:200]}); it may be truncated or damaged. Copy it again "
                         "from the source.") from err
    rows, columns = index.stored_rows, index.stored_columns
    if (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != (rows, columns):
        raise InputError(f"{path}: Rows x Columns changed since the series was indexed; index the "
                         "folder again.")
    for name in ("RescaleSlope", "RescaleIntercept"):
        if name not in ds:
            raise InputError(f"{path}: {name} is missing, so stored values cannot be turned into "
                             "line integrals. Repair the header.")
    bits, signed = int(ds.get("BitsAllocated", 16)), int(ds.get("PixelRepresentation", 0))
    if bits != 16:
        raise InputError(f"{path}: BitsAllocated (0028,0100) is {bits}; DICOM-CT-PD pixel data "
                         "are 16-bit. Re-export the series.")
    data = ds.get("PixelData")
    need = 2 * rows * columns
    if data is None or len(data) < need:
        have = 0 if data is None else len(data)
        raise InputError(f"{path}: pixel data has {have} bytes, expected {need} ({rows} x "
                         f"{columns} x 16 bit); the file is truncated. Copy it again from the "
                         "source.")
    stored = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=rows * columns)
    values = stored.reshape(rows, columns) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return stored_to_projection(values, index.channels_along_rows)


def read_views(index: ProjectionIndex, view_indices: Sequence[int] | np.ndarray,
               progress: bool | None = None) -> np.ndarray:
    """Line integrals of the views ``view_indices``: [n, rows, channels] float32.

    Only these files are read. Rows increase towards +z, channels with the fan angle (module
    docstring). ``progress``: show a progress bar (default: when reading 256 views or more).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415 - only needed here

    idx = np.asarray(view_indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= index.num_views):
        raise ValueError(f"read_views: view indices must lie in [0, {index.num_views}), got "
                         f"{idx.min()}..{idx.max()}.")
    scan = index.scan
    out = np.empty((idx.size, scan.num_rows, scan.num_channels), np.float32)
    show = idx.size >= _PROGRESS_MIN_VIEWS if progress is None else progress
    for i, v in enumerate(tqdm(idx, desc="read views", unit="view", disable=not show)):
        out[i] = _pixels(index.files[v], index)
    return out


def rebin_series(index: ProjectionIndex, z_mm: Sequence[float], image: ImageGrid,
                 ffs: str = "native", progress: bool | None = None
                 ) -> tuple[np.ndarray, list[FocalSpotGroup]]:
    """Fan-beam sinograms of the slices ``z_mm`` (mm), reading only the views they need.

    Args:
      ffs: flying-focal-spot handling, "native", "common" or "ignore" (``rebin``'s docstring).

    Returns:
      (sinograms [S, N, channels] float32, their focal-spot groups of views and geometries on
      ``image``; ``rebin.reconstruct`` gives the FBP of all views).
    """
    views = views_needed(index.scan, z_mm)
    projections = read_views(index, views, progress)
    sinograms = rebin(projections, index.scan, views, z_mm, ffs)
    return np.asarray(sinograms), fan_geometries(index.scan, image, ffs)


def check_pair(full: ProjectionIndex, quarter: ProjectionIndex) -> None:
    """Raises InputError unless the quarter-dose series has the full-dose series' views: the same
    number, scanner constants, angles (within 1e-5 rad), table positions (within 1e-3 mm) and
    focal-spot offsets."""
    a, b = full.scan, quarter.scan
    where = f"quarter-dose series {quarter.folder} vs full-dose series {full.folder}"
    if full.num_views != quarter.num_views:
        raise InputError(f"{where}: {quarter.num_views} views vs {full.num_views}; the quarter "
                         "dose must have every view of the full dose. Pair the series of the "
                         "same scan.")
    for name in ("num_rows", "num_channels", "channel_spacing_mm", "row_spacing_mm",
                 "source_to_isocenter_mm", "source_to_detector_mm", "central_channel",
                 "central_row", "views_per_rotation"):
        if getattr(a, name) != getattr(b, name):
            raise InputError(f"{where}: {name} is {getattr(b, name)!r} vs {getattr(a, name)!r}; "
                             "not the same scanner geometry. Pair the series of the same scan.")
    checks = (("angle", a.source_angles_rad, b.source_angles_rad, 1e-5, "rad"),
              ("table position", a.table_positions_mm, b.table_positions_mm, 1e-3, "mm"),
              ("focal-spot angular offset", a.ffs_angular_rad, b.ffs_angular_rad, 1e-7, "rad"),
              ("focal-spot axial offset", a.ffs_axial_mm, b.ffs_axial_mm, 1e-5, "mm"),
              ("focal-spot radial offset", a.ffs_radial_mm, b.ffs_radial_mm, 1e-5, "mm"))
    for what, x, y, tol, unit in checks:
        bad = np.flatnonzero(np.abs(x - y) > tol)
        if bad.size:
            i = bad[0]
            raise InputError(f"{where}: view {i} ({quarter.files[i].name} vs "
                             f"{full.files[i].name}) has {what} {y[i]:.6f} {unit} vs "
                             f"{x[i]:.6f} {unit} ({bad.size} views differ); the series are not "
                             "the same scan. Pair the series of the same patient and scan.")
