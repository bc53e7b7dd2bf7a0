"""Readers for user CT images: DICOM series (one folder per patient) and NumPy stacks, in HU.

The LDCT Grand Challenge / TCIA "LDCT-and-Projection-data" full-dose images come as one DICOM
series per patient; ``read_dicom_patients`` reads a folder holding one sub-folder per patient.
``read_numpy_stack`` reads ``.npy`` / ``.npz`` arrays already in HU. ``resample_to_grid`` brings
slices from their own pixel spacing onto the reconstruction grid (size_px x size_px pixels of
pixel_size_mm), padding with air (-1000 HU).

Rescale tags: the CT Image IOD makes RescaleSlope and RescaleIntercept mandatory, and stored values
are often offset (e.g. stored 0 = -1024 HU), so a file without them is an error rather than a
silent guess; pass ``missing_rescale=(slope, intercept)`` when you know the encoding, and the reader
uses it for those files with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError

from consensus_jax.errors import InputError, MissingInputError, UserError

AIR_HU = -1000.0

# Decoder packages for compressed transfer syntaxes (pydicom's pixel-data plugins).
_JPEG = "`pip install pylibjpeg pylibjpeg-libjpeg` or `pip install python-gdcm`"
_JPEG_LS = "`pip install pyjpegls`, `pip install pylibjpeg pylibjpeg-libjpeg` or `pip install " \
           "python-gdcm`"
_J2K = "`pip install pylibjpeg pylibjpeg-openjpeg` or `pip install python-gdcm`"
_DECODERS = {
    "1.2.840.10008.1.2.4.50": _JPEG, "1.2.840.10008.1.2.4.51": _JPEG,
    "1.2.840.10008.1.2.4.57": _JPEG, "1.2.840.10008.1.2.4.70": _JPEG,
    "1.2.840.10008.1.2.4.80": _JPEG_LS, "1.2.840.10008.1.2.4.81": _JPEG_LS,
    "1.2.840.10008.1.2.4.90": _J2K, "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": "`pip install pylibjpeg pylibjpeg-openjpeg`",
    "1.2.840.10008.1.2.4.202": "`pip install pylibjpeg pylibjpeg-openjpeg`",
    "1.2.840.10008.1.2.4.203": "`pip install pylibjpeg pylibjpeg-openjpeg`",
}
_ANY_DECODER = "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or `pip install " \
               "python-gdcm`"
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in HU.

    hu: [S, H, W] float32, slices sorted by position along z (ascending ImagePositionPatient[2],
        or InstanceNumber when positions are missing).
    pixel_size_mm: in-plane pixel spacing (square pixels); None if the source did not say.
    slice_thickness_mm: DICOM SliceThickness, None if absent.
    slice_positions_mm: [S] ImagePositionPatient[2] of each slice, None if absent.
    files: the DICOM file of each slice ([S]); empty for NumPy sources.
    """

    hu: np.ndarray
    pixel_size_mm: float | None
    patient_id: str
    source: str
    slice_thickness_mm: float | None = None
    slice_positions_mm: np.ndarray | None = None
    files: tuple[str, ...] = ()

    @property
    def num_slices(self) -> int:
        return int(self.hu.shape[0])


# --------------------------------------------------------------------------------------------
# DICOM


def read_dicom_patients(root: str | Path, *,
                        missing_rescale: tuple[float, float] | None = None) -> dict[str, Volume]:
    """Read one CT series per patient from ``root/<patient_id>/**`` (files of any name).

    Patient ids are the sub-folder names. If ``root`` has no sub-folders but holds DICOM files
    itself, it is read as one patient named after the folder. Files that are not DICOM (e.g. a
    README) and DICOMDIR indexes are skipped. HU = stored value * RescaleSlope + RescaleIntercept.

    Raises FileNotFoundError for a missing root or a patient folder without DICOM files, and
    ValueError (naming the file, the tag and value, and what to do) for non-CT or localizer
    images, several series in one folder, inconsistent Rows/Columns/PixelSpacing, non-square
    pixels, non-axial slices, duplicate slice positions, missing PixelData or rescale tags, and
    compressed pixel data that no installed plugin can decode.
    """
    root = Path(root)
    if not root.exists():
        raise MissingInputError(
            f"DICOM folder {root} does not exist; pass the folder that holds one sub-folder per "
            "patient (each with that patient's CT series).")
    if not root.is_dir():
        raise MissingInputError(
            f"{root} is a file, not a folder; pass the folder that holds one sub-folder per "
            "patient (each with that patient's CT series).")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        if not any(p.is_file() for p in root.iterdir()):
            raise MissingInputError(
                f"{root} is empty; it should hold one sub-folder per patient with the DICOM "
                "files of that patient's CT series.")
        folders = [root]
    patients = {}
    for folder in folders:
        patients[folder.name] = _read_series(folder, missing_rescale)
    return patients


def read_dicom_series(folder: str | Path, *,
                      missing_rescale: tuple[float, float] | None = None) -> Volume:
    """Read the one CT series of a single patient folder (see ``read_dicom_patients``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"Patient folder {folder} does not exist or is not a folder; "
                                "pass a folder holding one patient's CT series.")
    return _read_series(folder, missing_rescale)


@contextlib.contextmanager
def _malformed_fields(path: Path) -> Iterator[None]:
    """Turns an error from a header field or pixel data of an unexpected form (a string where
    a number belongs, a single value where a list does, a pixel buffer of the wrong size) into
    an InputError naming ``path``."""
    try:
        yield
    except UserError:
        raise
    except (TypeError, ValueError, LookupError, AttributeError, ArithmeticError, RuntimeError,
            struct.error, BytesLengthException) as err:
        raise InputError(f"{path}: a header field or the pixel data has an unexpected form "
                         f"({type(err).__name__}: {str(err)[:200]}). Re-export the file, or "
                         "remove it from the patient folder.") from err


def _read_dicom(path: Path) -> pydicom.Dataset:
    """A DICOM file, also one written without the 128-byte preamble and "DICM" marker (which
    pydicom reads only when forced); a file that is not DICOM raises InvalidDicomError, a
    damaged one InputError."""
    with _malformed_fields(path):
        try:
            return pydicom.dcmread(path)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)
            if "SOPClassUID" not in ds and "PixelData" not in ds:
                raise
            return ds


def _dicom_files(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))
    found, skipped = [], []
    for path in files:
        try:
            ds = _read_dicom(path)
        except (InvalidDicomError, EOFError, OSError):
            skipped.append(path.name)
            continue
        with _malformed_fields(path):  # a damaged DICOM file: refused, by name
            if str(ds.get("SOPClassUID", "")) == _DICOMDIR_SOP_CLASS or path.name == "DICOMDIR":
                continue
        found.append((path, ds))
    if skipped and found:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5
                                          else "")
        warnings.warn(f"{folder}: {len(skipped)} file(s) are not DICOM and were skipped: "
                      f"{shown}.", stacklevel=4)
    if not found:
        raise MissingInputError(
            f"No DICOM files in patient folder {folder} ({len(files)} files, none readable as "
            "DICOM); put that patient's CT series (.dcm/.IMA files) in it or remove the folder.")
    return found


def _check_image(path: Path, ds: pydicom.Dataset) -> None:
    modality = ds.get("Modality")
    if modality is None and "PixelData" not in ds:
        raise InputError(
            f"{path}: a DICOM file ({path.stat().st_size} bytes) without Modality (0008,0060) or "
            "pixel data: truncated, or not an image. Re-export it from the scanner or PACS, or "
            "remove it from the patient folder.")
    if modality != "CT":
        raise InputError(
            f"{path}: Modality (0008,0060) is {modality!r}, expected 'CT'; this reader takes CT "
            "image series only. Remove non-CT files (e.g. RTSTRUCT, SR, PET, MR) from the "
            "patient folder.")
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if "LOCALIZER" in image_type:
        raise InputError(
            f"{path}: ImageType (0008,0008) {image_type} marks a localizer (scout) image; "
            "remove it from the patient folder and keep only the axial series.")
    if "PixelData" not in ds:
        raise InputError(
            f"{path}: no PixelData (7FE0,0010); the file holds no image (a report or index?). "
            "Remove it from the patient folder.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InputError(
            f"{path}: NumberOfFrames (0028,0008) is {frames}; enhanced multi-frame CT is not "
            "supported. Convert the series to single-frame files (e.g. `dcm2niix` or "
            "`emf2sf` from dcm4che) first.")
    if ds.get("SamplesPerPixel", 1) != 1 or ds.get("PhotometricInterpretation",
                                                   "MONOCHROME2") not in ("MONOCHROME1",
                                                                          "MONOCHROME2"):
        raise InputError(
            f"{path}: SamplesPerPixel={ds.get('SamplesPerPixel')} / PhotometricInterpretation="
            f"{ds.get('PhotometricInterpretation')!r}; CT images must be single-channel "
            "MONOCHROME. Remove colour images (secondary captures, screenshots) from the folder.")
    for tag in ("Rows", "Columns", "PixelSpacing"):
        if tag not in ds:
            raise InputError(f"{path}: required tag {tag} is missing; the file is not a usable "
                             "CT image. Remove it or repair its header.")
    spacing = [float(v) for v in np.atleast_1d(ds.PixelSpacing)]
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise InputError(f"{path}: PixelSpacing (0028,0030) is {spacing} mm; it must be two "
                         "positive numbers. Repair the header.")
    if len(spacing) != 2 or not np.isclose(spacing[0], spacing[1], rtol=1e-3):
        raise InputError(
            f"{path}: PixelSpacing (0028,0030) is {spacing} mm (row, column): pixels are not "
            "square. Resample the series to square pixels first.")
    orientation = ds.get("ImageOrientationPatient")
    if orientation is not None and len(orientation) == 6:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        if abs(normal[2]) < 0.9:
            raise InputError(
                f"{path}: ImageOrientationPatient (0020,0037) {list(map(float, orientation))} is "
                "not axial; this reader expects axial CT slices. Use the axial series.")


def _decode(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError, ValueError) as err:
        if syntax is not None and syntax.is_compressed:
            plugin = _DECODERS.get(str(syntax), _ANY_DECODER)
            raise InputError(
                f"{path}: cannot decode compressed pixel data (TransferSyntaxUID {syntax} = "
                f"{syntax.name}). Install a pydicom decoder plugin: {plugin}; or decompress the "
                "files first, e.g. `gdcmconv --raw in.dcm out.dcm` or dcmtk's `dcmdjpeg`/"
                f"`dcmdjpls`. pydicom said: {err}") from err
        raise InputError(f"{path}: cannot read pixel data ({err}); the file may be truncated or "
                         "damaged. Re-export or remove it.") from err


def _rescale(path: Path, ds: pydicom.Dataset,
             missing_rescale: tuple[float, float] | None) -> tuple[float, float]:
    missing = [tag for tag in ("RescaleSlope", "RescaleIntercept") if tag not in ds]
    if not missing:
        return float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if missing_rescale is None:
        raise InputError(
            f"{path}: {' and '.join(missing)} (0028,1053/0028,1052) missing, so stored values "
            "cannot be converted to HU. If you know the encoding, pass missing_rescale=(slope, "
            "intercept) to read_dicom_patients, e.g. (1.0, -1024.0) when stored 0 is -1024 HU "
            "or (1.0, 0.0) when values are stored as HU.")
    slope = float(ds.get("RescaleSlope", missing_rescale[0]))
    intercept = float(ds.get("RescaleIntercept", missing_rescale[1]))
    warnings.warn(f"{path}: {' and '.join(missing)} missing; using slope={slope}, "
                  f"intercept={intercept} from missing_rescale.", stacklevel=4)
    return slope, intercept


def _read_series(folder: Path, missing_rescale: tuple[float, float] | None) -> Volume:
    items = _dicom_files(folder)
    for path, ds in items:
        with _malformed_fields(path):
            _check_image(path, ds)
    series: dict[str, list[Path]] = {}
    for path, ds in items:
        with _malformed_fields(path):
            series.setdefault(str(ds.get("SeriesInstanceUID", "<none>")), []).append(path)
    if len(series) > 1:
        listing = "; ".join(f"{uid}: {len(paths)} files, e.g. {paths[0].name}"
                            for uid, paths in series.items())
        raise InputError(
            f"Patient folder {folder} mixes {len(series)} series (SeriesInstanceUID {listing}). "
            "Keep one series per patient folder: move the others (e.g. the low-dose or "
            "localizer series) into their own folders or delete them.")
    first_path, first = items[0]
    with _malformed_fields(first_path):
        shape = (int(first.Rows), int(first.Columns))
        spacing = float(first.PixelSpacing[0])
    for path, ds in items[1:]:
        with _malformed_fields(path):
            rows, cols, pixel = int(ds.Rows), int(ds.Columns), float(ds.PixelSpacing[0])
        if (rows, cols) != shape:
            raise InputError(
                f"{path}: Rows x Columns is {rows} x {cols} but "
                f"{first_path.name} has {shape[0]} x {shape[1]}; one series must have one image "
                "size. Remove the odd file(s) from the patient folder.")
        if not np.isclose(pixel, spacing, rtol=1e-4):
            raise InputError(
                f"{path}: PixelSpacing is {pixel} mm but {first_path.name} "
                f"has {spacing} mm; one series must have one pixel spacing. Remove the odd "
                "file(s) from the patient folder.")
    keys = []
    if all("ImagePositionPatient" in ds for _, ds in items):
        positions = True
        for path, ds in items:
            with _malformed_fields(path):
                keys.append(float(ds.ImagePositionPatient[2]))
    elif all("InstanceNumber" in ds for _, ds in items):
        positions = False
        for path, ds in items:
            with _malformed_fields(path):
                keys.append(float(ds.InstanceNumber))
    else:
        bad = next(p for p, ds in items
                   if "ImagePositionPatient" not in ds and "InstanceNumber" not in ds)
        raise InputError(
            f"{bad}: neither ImagePositionPatient (0020,0032) nor InstanceNumber (0020,0013) is "
            "present, so the slice order is unknown. Repair the headers (or re-export the "
            "series).")
    if not np.isfinite(keys).all():
        bad = items[int(np.argmin(np.isfinite(keys)))][0]
        tag = "ImagePositionPatient[2]" if positions else "InstanceNumber"
        raise InputError(f"{bad}: the slice position ({tag}) is not a finite number. Repair the "
                         "header.")
    order = np.argsort(keys, kind="stable")
    sorted_keys = np.asarray(keys)[order]
    same = np.nonzero(np.diff(sorted_keys) == 0)[0]
    if same.size:
        a, b = items[order[same[0]]][0], items[order[same[0] + 1]][0]
        tag = "ImagePositionPatient[2]" if positions else "InstanceNumber"
        raise InputError(
            f"{a} and {b} have the same {tag} = {sorted_keys[same[0]]}; a series has one slice "
            "per position. Remove duplicates or split repeated acquisitions into their own "
            "folders.")
    slices = []
    for i in order:
        path, ds = items[i]
        with _malformed_fields(path):
            slope, intercept = _rescale(path, ds, missing_rescale)
        if not (np.isfinite(slope) and np.isfinite(intercept) and slope != 0):
            raise InputError(f"{path}: RescaleSlope {slope} / RescaleIntercept {intercept} do "
                             "not map stored values to HU (not finite, or slope 0). Repair the "
                             "header.")
        with _malformed_fields(path):
            stored = _decode(path, ds)
            if stored.shape != shape:
                raise InputError(f"{path}: the pixel data is {stored.shape}, not Rows x Columns "
                                 f"= {shape}. Re-export the file.")
        slices.append((stored.astype(np.float64) * slope + intercept).astype(np.float32))
        check_slice_values(slices[-1], str(path))
    thickness = _slice_thickness(items)
    return Volume(
        hu=np.stack(slices), pixel_size_mm=spacing, patient_id=folder.name, source=str(folder),
        slice_thickness_mm=thickness,
        slice_positions_mm=sorted_keys.astype(np.float64) if positions else None,
        files=tuple(str(items[i][0]) for i in order))


def _slice_thickness(items: list[tuple[Path, pydicom.Dataset]]) -> float | None:
    """The series' one SliceThickness (mm; None when no file gives it): slices of several
    thicknesses (a reformat or a second reconstruction mixed in) are refused."""
    found: dict[float, Path] = {}
    for path, ds in items:
        with _malformed_fields(path):
            value = ds.get("SliceThickness")
            if value not in (None, ""):
                found.setdefault(round(float(value), 4), path)
    if len(found) > 1:
        listing = ", ".join(f"{t:g} mm ({p.name})" for t, p in sorted(found.items()))
        raise InputError(f"The series in {items[0][0].parent} mixes slice thicknesses: {listing}. "
                         "One series must have one thickness: move the slices of the other "
                         "reconstruction into their own folder.")
    return next(iter(found), None)


#: Stored CT values beyond these (HU) are another unit or damage: scanners store -1024 .. 3071
#: (extended scales up to about 30,000 for metal) and pad outside the field of view with at most
#: -3024.
PLAUSIBLE_HU = (-3100.0, 31000.0)


def check_slice_values(hu: np.ndarray, where: str) -> None:
    """Refuses one slice that holds no image (every pixel the same value, e.g. all zero: a
    blank or padding slice) or values beyond ``PLAUSIBLE_HU``; ``where`` names it."""
    lo, hi = float(np.min(hu)), float(np.max(hu))
    if lo == hi:
        raise InputError(f"{where}: every pixel is {lo:g} HU, so the slice holds no image (a "
                         "blank or padding slice). Remove it from the input.")
    if lo < PLAUSIBLE_HU[0] or hi > PLAUSIBLE_HU[1]:
        raise InputError(f"{where}: values span [{lo:.4g}, {hi:.4g}] HU, beyond what a scanner "
                         f"stores ({PLAUSIBLE_HU[0]:g} .. {PLAUSIBLE_HU[1]:g}); the data are "
                         "damaged or in another unit.")


def check_hu_stack(images: np.ndarray, where: str, check_hu: bool = True,
                   allow_flag: str = "check_hu=False") -> None:
    """Refuses a stack [S, H, W] that is not CT in HU: non-finite values, a blank slice or
    values no scanner stores (``check_slice_values``), and, with ``check_hu``, a value range
    unlike HU (max < 10 or min > -500: attenuation, normalised or stored values). Data
    preparation and denoising both use it; ``allow_flag`` names how to skip the last test."""
    if images.dtype.kind not in "iuf":
        raise InputError(f"{where}: array dtype is {images.dtype}; expected real numbers in HU.")
    finite = np.isfinite(images)
    if not finite.all():
        first = tuple(int(v) for v in np.argwhere(~finite)[0])
        raise InputError(f"{where}: {int((~finite).sum())} non-finite values (first at "
                         f"[slice, row, col] = {first}); replace NaN/inf (e.g. by -1000 HU "
                         "outside the body) first.")
    for i, hu in enumerate(images):
        check_slice_values(hu, f"{where}, slice {i}")
    lo, hi = float(images.min()), float(images.max())
    if check_hu and (hi < 10.0 or lo > -500.0):
        raise InputError(
            f"{where}: values span [{lo:.4g}, {hi:.4g}], which does not look like HU (air -1000, "
            "water 0, soft tissue: 20-80, bone > 300). Linear attenuation, normalised or stored "
            "values must be converted: HU = 1000 * (mu - mu_water) / mu_water (mu_water is "
            "about 0.019 /mm at 70 keV), or stored x RescaleSlope + RescaleIntercept. If the "
            f"images are HU but hold no air, pass {allow_flag}.")


def sample_slices(volume: Volume, n: int, seed: int) -> np.ndarray:
    """Pick ``n`` distinct slice indices of ``volume`` at random: sorted int array [n].

    The draw depends on the seed and the patient id, so one seed gives each patient its own
    choice, reproducibly.
    """
    total = volume.num_slices
    if n < 1:
        raise InputError(f"n={n}: ask for at least one slice per patient.")
    if n > total:
        raise InputError(
            f"Patient {volume.patient_id!r} ({volume.source}) has {total} slices but {n} were "
            f"requested; lower the number of slices per patient to at most {total} or leave "
            "this patient out.")
    rng = np.random.default_rng([seed, zlib.crc32(volume.patient_id.encode())])
    return np.sort(rng.choice(total, size=n, replace=False))


# --------------------------------------------------------------------------------------------
# NumPy


@contextlib.contextmanager
def _unreadable_numpy(path: Path) -> Iterator[None]:
    """Turns numpy's errors for a truncated or damaged file, or one holding pickled objects,
    into InputError naming the file."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise InputError(f"{path}: cannot be read as a NumPy array file ({err}); it may be "
                         "truncated, damaged or hold Python objects. Save the images again with "
                         "numpy.save / numpy.savez (plain numbers, no objects).") from None


def _load_numpy(path: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, the stored pixel size or None) of a .npy or .npz file."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False), None
    stored_pixel = None
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.keys())
        if key is not None:
            if key not in names:
                raise InputError(f"{path}: no array named {key!r}; the file holds {names}. "
                                 "Pass one of these as key=.")
            chosen = key
        elif "hu" in names:
            chosen = "hu"
        else:
            candidates = [k for k in names if k != "pixel_size_mm"]
            if len(candidates) != 1:
                raise InputError(
                    f"{path}: holds arrays {names} and none is named 'hu'; pass key= to "
                    "choose the images (or save them under the name 'hu').")
            chosen = candidates[0]
        images = archive[chosen]
        if "pixel_size_mm" in names:
            stored_pixel = np.asarray(archive["pixel_size_mm"])
    return np.asarray(images), stored_pixel


def read_numpy_stack(path: str | Path, *, key: str | None = None,
                     pixel_size_mm: float | None = None, check_hu: bool = True) -> Volume:
    """Read HU images from ``.npy`` ([S, H, W] or [H, W]) or ``.npz`` into a Volume.

    For ``.npz`` the images are the array ``key``, else the array named "hu", else the only array
    (besides an optional scalar "pixel_size_mm"). The pixel size comes from the argument, else
    the file's "pixel_size_mm", else stays None. ``check_hu`` rejects values that do not look
    like HU (max < 10 or min > -500: attenuation or normalised units); pass False for HU images
    that contain no air.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"NumPy file {path} does not exist (expected a .npy or .npz file "
                                "of CT images in HU).")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise InputError(f"{path}: unsupported suffix {path.suffix!r}; save the images with "
                         "numpy.save (.npy) or numpy.savez (.npz).")
    with _unreadable_numpy(path):
        images, stored_pixel = _load_numpy(path, key)
    if stored_pixel is not None and (stored_pixel.size != 1
                                     or not np.isfinite(stored_pixel).all()
                                     or float(stored_pixel) <= 0):
        raise InputError(f"{path}: 'pixel_size_mm' is {stored_pixel!r}; it must be one positive "
                         "number (mm per pixel). Fix it or pass pixel_size_mm=.")
    if pixel_size_mm is None and stored_pixel is not None:
        pixel_size_mm = float(stored_pixel)
    if pixel_size_mm is not None and not pixel_size_mm > 0:
        raise InputError(f"pixel_size_mm={pixel_size_mm} must be positive (mm).")
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise InputError(f"{path}: array shape {images.shape} has {images.ndim} dims; expected "
                         "[S, H, W] (a stack of slices) or [H, W] (one slice).")
    if min(images.shape) < 1:
        raise InputError(f"{path}: array shape {images.shape} is empty.")
    check_hu_stack(images, str(path), check_hu)
    return Volume(hu=images.astype(np.float32), pixel_size_mm=pixel_size_mm,
                  patient_id=path.stem, source=str(path))


# --------------------------------------------------------------------------------------------
# Resampling onto the reconstruction grid


def _axis_weights(n_in: int, p_in: float, n_out: int, p_out: float) -> np.ndarray:
    """[n_out, n_in] weights along one axis; both grids are centred on the same point.

    Coarser output (p_out >= p_in): the exact overlap fraction of each input pixel within each
    output pixel (area averaging, no aliasing). Finer output: linear interpolation between input
    pixel centres, edge pixels extended by half a pixel. Rows sum to the part of the output pixel
    that lies on the input; the rest is air.
    """
    if p_out >= p_in:
        edges_in = (np.arange(n_in + 1) - n_in / 2.0) * p_in
        edges_out = (np.arange(n_out + 1) - n_out / 2.0) * p_out
        lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
        hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
        return np.clip(hi - lo, 0.0, None) / p_out
    centres = (np.arange(n_out) + 0.5 - n_out / 2.0) * p_out
    v = centres / p_in + n_in / 2.0 - 0.5  # input index coordinate
    inside = (v >= -0.5) & (v <= n_in - 0.5)
    v = np.clip(v, 0.0, n_in - 1.0)
    j0 = np.minimum(np.floor(v).astype(int), max(n_in - 2, 0))
    frac = v - j0
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(w, (rows, j0), (1.0 - frac) * inside)
    np.add.at(w, (rows, np.minimum(j0 + 1, n_in - 1)), frac * inside)
    return w


def resample_to_grid(hu: np.ndarray, pixel_size_mm: float, size_px: int,
                     grid_pixel_size_mm: float) -> np.ndarray:
    """Resample slices [H, W] or [S, H, W] (HU, pixels of pixel_size_mm) onto the reconstruction
    grid [size_px, size_px] (or [S, size_px, size_px]) with pixels of grid_pixel_size_mm.

    Image centres coincide. Area averaging when the grid is coarser, linear interpolation when
    finer; what the input does not cover is air (-1000 HU). Cropping anything but air out of a
    field of view larger than the grid's gives a warning (truncated projections would follow).
    """
    hu = np.asarray(hu)
    if hu.ndim not in (2, 3):
        raise InputError(f"hu has shape {hu.shape}; expected [H, W] or [S, H, W].")
    if not (pixel_size_mm and pixel_size_mm > 0 and grid_pixel_size_mm > 0 and size_px >= 1):
        raise InputError(
            f"pixel_size_mm={pixel_size_mm}, grid_pixel_size_mm={grid_pixel_size_mm} and "
            f"size_px={size_px} must be positive; a NumPy source without a pixel size needs "
            "read_numpy_stack(..., pixel_size_mm=...).")
    h, w = hu.shape[-2:]
    wr = _axis_weights(h, pixel_size_mm, size_px, grid_pixel_size_mm)
    wc = _axis_weights(w, pixel_size_mm, size_px, grid_pixel_size_mm)
    lost_rows, lost_cols = wr.sum(axis=0) == 0, wc.sum(axis=0) == 0
    if lost_rows.any() or lost_cols.any():
        stack = hu.reshape(-1, h, w)
        lost = np.concatenate([stack[:, lost_rows, :].ravel(), stack[:, :, lost_cols].ravel()])
        if lost.size and lost.max() > -900.0:
            warnings.warn(
                f"The images ({w} x {h} px of {pixel_size_mm} mm = {w * pixel_size_mm:.0f} x "
                f"{h * pixel_size_mm:.0f} mm) are larger than the grid ({size_px} px of "
                f"{grid_pixel_size_mm} mm = {size_px * grid_pixel_size_mm:.0f} mm); the cropped "
                f"border holds tissue (up to {lost.max():.0f} HU). Enlarge grid_pixel_size_mm "
                "or size_px to keep the whole body.", stacklevel=2)
    out = wr @ hu.astype(np.float64) @ wc.T
    covered = np.outer(wr.sum(axis=1), wc.sum(axis=1))
    return (out + AIR_HU * (1.0 - covered)).astype(np.float32)
