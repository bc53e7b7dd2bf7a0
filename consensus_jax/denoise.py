"""Denoises new scans with an exported model or a training workdir.

  python -m consensus_jax.denoise --model=exported/ct_distilled --input=scan/ --output=scan_dn/

Inputs, by what ``--input`` is:

* a folder of DICOM-CT-PD raw projections (one quarter-dose helical series, e.g.
  ``.../quarter_DICOM-CT-PD``): each slice is rebinned and reconstructed exactly as data
  preparation made the training data (``consensus_jax.ct.projection_input``: x1 and x2 from the
  odd and even views, x_est from all), on the grid the model was trained on, and the model's
  inputs are run; the result is a new DICOM image series (CT Image Storage, one file per slice,
  int16 with RescaleIntercept -1024 and RescaleSlope 1, so HU = stored - 1024) in the
  ``--output`` folder, with ImagePositionPatient / SliceLocation at the slice's table position,
  PixelSpacing of the reconstruction and the projection files' patient and study. Slices: by
  default every ``--slice_spacing_mm`` (1 mm, the thin-slice spacing of the LDCT data set's
  image series) at table positions k * spacing over the whole range the scan covers at every
  angle; ``--num_slices`` spreads that many evenly over the range instead, and
  ``--slice_positions_mm`` names positions (mm);
* a folder of DICOM files (one CT series): a new series is written to the ``--output`` folder,
  with new SeriesInstanceUID and SOPInstanceUIDs, the same study, patient and geometry tags,
  "denoised" appended to SeriesDescription and the pixels stored as the input stored them
  (RescaleSlope/Intercept, clipped to the stored range);
* ``.nii`` / ``.nii.gz`` (nibabel; ``pip install nibabel``): axial slices along the third axis,
  written as float32 with the input's affine;
* ``.npy``: a stack [S, H, W] (or one slice [H, W]) in HU, checked as data preparation checks
  it (finite, no blank slice, values a scanner stores, a range like HU), written as ``.npy``;
* ``.npz`` with arrays ``x1`` and ``x2``: the two half reconstructions a consensus pair needs
  (an optional scalar ``pixel_size_mm`` is checked against the model's);
* ``.h5``, a fastMRI multi-coil file of fully sampled k-space (MRI models): every slice is
  undersampled, split and reconstructed exactly as the training data was (the manifest's
  acceleration, centre lines and SENSE settings; ``--seed`` picks the masks), so the consensus
  pair runs on its own inputs; a distilled model gets the SENSE image. The output ``.h5`` holds
  ``denoised`` (complex64 [S, H, W], k-space units, centrally cropped to the header's
  reconstruction matrix as fastMRI crops its images: 320 x 320 for knee files with 368 ky
  columns), ``denoised_magnitude``, the masks used (``mask``: the 4x mask; ``mask1``, ``mask2``:
  its two halves, [S, ky] uint8), the input's ``ismrmrd_header`` and its attributes except
  ``max`` and ``norm``, which describe the input's own RSS image and are written anew for
  ``denoised_magnitude`` (its maximum and its L2 norm over the volume). An input unlike the
  training data (coil count, matrix size, effective acceleration, noise level) is refused
  without ``--allow_mismatch`` (``check_mri_input``), as CT pixel spacing is.

A model trained as the consensus pair needs the two halves of each slice; a reconstructed scan
has one image, so distil the pair first (``loss.kind=distill``).

``--uncertainty`` (a model of several networks, ``Model.has_uncertainty``) also writes the
spread of its networks (``consensus_jax.uncertainty``; ``|f1 - f2| / 2`` for the pair) beside
the output, named after it (``uncertainty_path``): a second DICOM series (its own
SeriesInstanceUID, "consensus spread" in SeriesDescription, the same geometry), or a second
``.nii.gz`` / ``.npy`` / ``.h5`` file (``spread``: the modulus of the complex spread, in the units
of ``denoised``). A model of one network refuses it (exit status 2).

The output is written under a
temporary name and renamed when complete. ``--overwrite`` replaces only an unchanged earlier
output of this command, and the output may not be, contain or lie inside the input or the
model (``consensus_jax.outputs``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from consensus_jax import artifact, errors, outputs
from consensus_jax.errors import ConfigError, InputError, MissingInputError

#: The command named in the record of each output it writes (``consensus_jax.outputs``).
COMMAND = "consensus_jax.denoise"
#: Pixel spacings more than this factor away from the training data's are refused.
SPACING_TOLERANCE = 1.5
#: MRI coil counts, matrix sizes and effective accelerations more than this factor away from the
#: training data's are refused.
MRI_TOLERANCE = 1.5
#: MRI noise levels (the simulation's SNR, peak image magnitude / noise std per k-space sample)
#: more than this factor away from the training data's are refused.
NOISE_TOLERANCE = 2.0
#: fastMRI attributes that describe the input's own reconstruction, never copied to the output.
FASTMRI_IMAGE_ATTRS = ("max", "norm")
#: Output suffixes for each kind of input (a DICOM series folder is written as a folder).
OUTPUT_SUFFIXES = {"npy": (".npy",), "nifti": (".nii", ".nii.gz"), "fastmri": (".h5", ".hdf5")}
#: Added to the output's name (before its suffix) for the networks' spread (``--uncertainty``).
UNCERTAINTY_TAG = "_uncertainty"


def uncertainty_path(output: str | Path) -> Path:
    """Where ``--uncertainty`` writes the spread of ``output``: ``out.npy`` ->
    ``out_uncertainty.npy``, ``vol.nii.gz`` -> ``vol_uncertainty.nii.gz``, a DICOM series folder
    ``dn`` -> ``dn_uncertainty``."""
    output = Path(output)
    known = sorted({x for suffixes in OUTPUT_SUFFIXES.values() for x in suffixes}, key=len,
                   reverse=True)
    suffix = next((x for x in known if output.name.lower().endswith(x)), "")
    stem = output.name[:len(output.name) - len(suffix)]
    return output.with_name(f"{stem}{UNCERTAINTY_TAG}{output.name[len(stem):]}")


def _trained_spacing(manifest: dict[str, Any]) -> float | None:
    geometry = manifest.get("trained_for", {}).get("geometry", {})
    return geometry.get("image", {}).get("pixel_size_mm")


def check_spacing(manifest: dict[str, Any], spacing_mm: float | tuple[float, ...] | None,
                  source: str, allow: bool) -> None:
    """Refuses a pixel spacing (one number, or one per image axis) far from the one the model
    was trained on (noise texture and structure sizes change with it) unless ``allow``."""
    trained = _trained_spacing(manifest)
    if allow or trained is None or spacing_mm is None:
        return
    for spacing in np.atleast_1d(spacing_mm):
        ratio = float(spacing) / trained
        if not 1 / SPACING_TOLERANCE <= ratio <= SPACING_TOLERANCE:
            shown = " x ".join(f"{float(v):.3g}" for v in np.atleast_1d(spacing_mm))
            raise InputError(
                f"{source}: pixel spacing {shown} mm, but the model was trained at "
                f"{trained:.3g} mm ({ratio:.2f}x). Resample the scan, train on data like it, or "
                "pass --allow_other_spacing to denoise anyway.")


def check_values(manifest: dict[str, Any], images: np.ndarray, source: str, allow: bool) -> None:
    """Refuses what data preparation refuses: for CT (``ct.io.check_hu_stack``) non-finite
    values, blank slices, values no scanner stores and, unless ``allow``, a range unlike HU;
    for MRI non-finite values."""
    if manifest["modality"] == "ct":
        from consensus_jax.ct import io as ct_io  # noqa: PLC0415

        ct_io.check_hu_stack(images, source, check_hu=not allow,
                             allow_flag="--allow_unusual_values")
        return
    finite = np.isfinite(images).reshape(images.shape[0], -1).all(axis=1)
    if not finite.all():
        raise InputError(f"{source}: slice {int(np.argmin(finite))} holds NaN or inf values; "
                         "repair or remove it.")


def input_kind(source: Path) -> str:
    """"projections" (a DICOM-CT-PD folder), "dicom" (another folder), "nifti", "npy" (.npy or
    .npz) or "fastmri"."""
    name = source.name.lower()
    if source.is_dir():
        from consensus_jax.ct import ctpd  # noqa: PLC0415

        return "projections" if ctpd.is_projection_series(source) else "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".npy", ".npz")):
        return "npy"
    if name.endswith((".h5", ".hdf5")):
        return "fastmri"
    raise InputError(f"--input {source}: unknown format; pass a DICOM series folder, a "
                     "DICOM-CT-PD projection series folder, a .nii / .nii.gz file, a .npy "
                     "stack, an .npz with x1 and x2, or a fastMRI .h5.")


def check_paths(source: str | Path, output: str | Path, overwrite: bool,
                model: str | Path | None = None, uncertainty: bool = False
                ) -> tuple[Path, Path, str]:
    """(input, output, input kind) once the input exists, the output's name suits the input
    and the output (and with ``uncertainty`` the spread's, ``uncertainty_path``) may be written
    there (``outputs.check_destination``): before any work."""
    source, output = Path(source), Path(output)
    if not source.exists():
        raise MissingInputError(f"--input {source} does not exist.")
    kind = input_kind(source)
    protected = {"input": source, "model": Path(model) if model is not None else None}
    outputs.check_destination(output, COMMAND, overwrite, protected)
    if uncertainty:
        outputs.check_destination(uncertainty_path(output), COMMAND, overwrite,
                                  {**protected, "output": output},
                                  flag="--uncertainty: the spread's output")
    suffixes = OUTPUT_SUFFIXES.get(kind)
    if suffixes and not output.name.lower().endswith(suffixes):
        raise ConfigError(f"--output {output}: a {kind} input is written as {' or '.join(suffixes)}"
                          f"; name the output e.g. {output.name}{suffixes[0]}.")
    return source, output, kind


def _run(model: artifact.Model, images: list[np.ndarray], batch_size: int,
         uncertainty: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(denoised, the networks' spread or None unless ``uncertainty``), from one pass."""
    with tqdm(total=images[0].shape[0], unit="slice", desc="denoise") as bar:
        if uncertainty:
            return model.denoise_with_uncertainty(*images, batch_size=batch_size,
                                                  progress=bar.update)
        return model.denoise(*images, batch_size=batch_size, progress=bar.update), None


def require_uncertainty(model: artifact.Model) -> None:
    """Refuses ``--uncertainty`` for a model without a spread of networks (usage error)."""
    if not model.has_uncertainty:
        raise ConfigError(
            f"--uncertainty: this model ({model.manifest['kind']}) is one network, so it has no "
            "spread of networks to write; only a model of several networks (loss.kind="
            "consensus) gives one"
            + ("" if model.manifest.get("format_version", 1) >= 3 else
               " (and one exported before format version 3 must be exported again)")
            + ". Leave out --uncertainty.")


# --- formats -----------------------------------------------------------------------------------

def denoise_dicom_series(model: artifact.Model, folder: Path, output: Path, batch_size: int = 8,
                         allow_other_spacing: bool = False, allow_unusual_values: bool = False,
                         uncertainty: bool = False, **_: Any) -> Path:
    """A new DICOM series in ``output`` from the CT series in ``folder`` (and with
    ``uncertainty`` a second one, the networks' spread in HU, at ``uncertainty_path``)."""
    from consensus_jax.ct import io as ct_io  # noqa: PLC0415

    _require_modality(model, "ct", f"{folder} (a DICOM series)")
    _require_single_image(model, f"{folder} (a DICOM series)")
    volume = ct_io.read_dicom_series(folder)
    check_spacing(model.manifest, volume.pixel_size_mm, str(folder), allow_other_spacing)
    check_values(model.manifest, volume.hu, str(folder), allow_unusual_values)
    denoised, spread = _run(model, [volume.hu], batch_size, uncertainty)
    step = model.manifest["checkpoint"]["step"]
    kind = model.manifest["kind"]
    _write_dicom_series(volume.files, folder, output, denoised, "denoised",
                        f"Denoised by consensus-jax ({kind}, step {step})")
    if spread is not None:
        _write_dicom_series(volume.files, folder, uncertainty_path(output), spread,
                            "consensus spread (HU)",
                            f"Spread of the networks (consensus uncertainty) by consensus-jax "
                            f"({kind}, step {step})", uncertainty=True)
    return output


def _write_dicom_series(files: list[Path] | list[str], folder: Path, output: Path,
                        hu: np.ndarray, description: str, derivation: str,
                        uncertainty: bool = False) -> None:
    """A derived series at ``output``: each file of ``files`` (under ``folder``) with the
    pixels of ``hu`` [S, H, W] (HU, stored as the input stored its pixels), a new
    SeriesInstanceUID and SOPInstanceUIDs, ``description`` appended to SeriesDescription; the
    study, patient and geometry tags are kept."""
    import pydicom  # noqa: PLC0415
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: PLC0415

    with outputs.write_output(output, COMMAND, folder=True) as tmp:
        series_uid = generate_uid()
        for path, image in zip(files, hu, strict=True):
            ds = pydicom.dcmread(path, force=True)
            slope = float(ds.get("RescaleSlope", 1.0))
            intercept = float(ds.get("RescaleIntercept", 0.0))
            signed = int(ds.PixelRepresentation) == 1
            bits = int(ds.get("BitsStored", ds.BitsAllocated))
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
            dtype = np.dtype(f"{'i' if signed else 'u'}{int(ds.BitsAllocated) // 8}")
            stored = np.clip(np.round((image.astype(np.float64) - intercept) / slope), lo, hi)
            syntax = ds.file_meta.get("TransferSyntaxUID")
            if syntax is None or syntax.is_compressed:  # written back uncompressed
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = stored.astype(dtype).tobytes()
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} {description}".strip()
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.DerivationDescription = derivation
            if uncertainty:  # the input's display window is for HU images, not for a spread
                for tag in ("WindowCenter", "WindowWidth"):
                    if tag in ds:
                        delattr(ds, tag)
            target = tmp / Path(path).relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)


def slice_positions(scan, spacing_mm: float = 1.0, num_slices: int | None = None,
                    positions_mm: list[float] | None = None, source: str = "") -> np.ndarray:
    """Table positions (mm) to reconstruct from a helical scan (module docstring): the given
    ``positions_mm``, else ``num_slices`` evenly over the covered range, else every
    ``spacing_mm`` at k * spacing_mm inside it. [S] float64, increasing."""
    from consensus_jax.ct import projection_input, rebin  # noqa: PLC0415

    if positions_mm:
        z = np.unique(np.asarray(positions_mm, np.float64))
        projection_input.check_positions(scan, z, source)
        return z
    if num_slices is not None:
        if num_slices < 1:
            raise ConfigError(f"--num_slices={num_slices}: at least 1.")
        lo, hi = rebin.slice_range_mm(scan)
        return (np.asarray([(lo + hi) / 2]) if num_slices == 1
                else np.linspace(lo, hi, num_slices))
    try:
        k = projection_input.slice_grid(scan, spacing_mm)
    except ValueError as err:
        raise ConfigError(f"--slice_spacing_mm: {err}") from None
    if k.size == 0:
        raise InputError(f"{source}: the scan covers no position k * {spacing_mm} mm; pass "
                         "--num_slices or --slice_positions_mm.")
    return k * float(spacing_mm)


def _trained_grid(model: artifact.Model, what: str, size_px: int | None,
                  pixel_size_mm: float | None):
    from consensus_jax.ct.geometry import ImageGrid  # noqa: PLC0415

    image = model.manifest.get("trained_for", {}).get("geometry", {}).get("image", {})
    size_px = size_px or image.get("size_px")
    pixel_size_mm = pixel_size_mm or image.get("pixel_size_mm")
    if not (size_px and pixel_size_mm):
        raise InputError(f"{what}: the model's manifest does not record the reconstruction "
                         "grid it was trained on; pass --recon_size_px and "
                         "--recon_pixel_size_mm.")
    return ImageGrid(int(size_px), float(pixel_size_mm))


#: The stored values of a reconstructed series: HU = stored * 1 - 1024, int16.
_RESCALE_INTERCEPT_HU = -1024.0


def denoise_projections(model: artifact.Model, folder: Path, output: Path, batch_size: int = 8,
                        slice_spacing_mm: float = 1.0, num_slices: int | None = None,
                        slice_positions_mm: list[float] | None = None,
                        recon_size_px: int | None = None,
                        recon_pixel_size_mm: float | None = None, uncertainty: bool = False,
                        **_: Any) -> Path:
    """A DICOM image series in ``output`` from a quarter-dose DICOM-CT-PD series (module
    docstring): the model's inputs (x1, x2 for the pair; x_est or x1 for one network) are
    reconstructed from the projections, as data preparation does. With ``uncertainty``, a second
    series at ``uncertainty_path(output)`` holds the networks' spread (HU)."""
    import pydicom  # noqa: PLC0415

    from consensus_jax.ct import ctpd, projection_input  # noqa: PLC0415

    what = f"{folder} (DICOM-CT-PD projections)"
    _require_modality(model, "ct", what)
    cannot = [k for k in model.inputs if k not in projection_input.QUARTER_DOSE_KEYS]
    if cannot:
        raise InputError(
            f"{what}: this model ({model.manifest['kind']}) takes {', '.join(model.inputs)}, "
            f"but a quarter-dose projection series gives only "
            f"{', '.join(projection_input.QUARTER_DOSE_KEYS)} (the odd/even-view and all-view "
            f"FBPs); it cannot make {', '.join(cannot)}. Use a model trained on those images "
            "(the consensus pair on x1, x2, or one network on x_est).")
    grid = _trained_grid(model, what, recon_size_px, recon_pixel_size_mm)
    index = ctpd.index_series(folder)
    z_mm = slice_positions(index.scan, slice_spacing_mm, num_slices, slice_positions_mm, what)
    images: dict[str, list[np.ndarray]] = {k: [] for k in model.inputs}
    made = projection_input.reconstruct_slices(index, z_mm, grid, keys=model.inputs)
    for slice_images in tqdm(made, total=len(z_mm), unit="slice", desc="reconstruct"):
        for k in model.inputs:
            images[k].append(slice_images[k])
    denoised, spread = _run(model, [np.stack(images[k]) for k in model.inputs], batch_size,
                            uncertainty)
    first = pydicom.dcmread(index.files[0], stop_before_pixels=True)
    step, kind = model.manifest["checkpoint"]["step"], model.manifest["kind"]
    recon = f"Hann FBP of single-slice-rebinned projections ({', '.join(model.inputs)})"
    _write_reconstructed_series(output, first, index.scan, grid, z_mm, denoised, "denoised",
                                f"{recon}, denoised by consensus-jax ({kind}, step {step})")
    if spread is not None:
        _write_reconstructed_series(
            uncertainty_path(output), first, index.scan, grid, z_mm, spread,
            "consensus spread (HU)", f"{recon}, spread of the networks (consensus uncertainty) "
            f"by consensus-jax ({kind}, step {step})")
    return output


def _write_reconstructed_series(output: Path, first: Any, scan: Any, grid: Any, z_mm: list[float],
                                hu: np.ndarray, description: str, derivation: str) -> None:
    """A new CT image series at ``output`` of the slices ``hu`` [S, H, W] (HU) reconstructed at
    table positions ``z_mm`` on ``grid``, with the patient and study tags of the projection file
    ``first``."""
    import pydicom  # noqa: PLC0415
    from pydicom.dataset import FileMetaDataset  # noqa: PLC0415
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: PLC0415

    # Nominal thickness of a single-slice rebinning: one detector row at the isocentre.
    thickness = scan.row_spacing_mm * scan.source_to_isocenter_mm / scan.source_to_detector_mm
    corner = -(grid.size_px - 1) / 2.0 * grid.pixel_size_mm  # first pixel centre, x and y
    with outputs.write_output(output, COMMAND, folder=True) as tmp:
        series_uid, frame_uid = generate_uid(), generate_uid()
        for i, (z, image) in enumerate(zip(z_mm, hu, strict=True)):
            ds = pydicom.Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID = CTImageStorage
            for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                        "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                        "AccessionNumber", "ReferringPhysicianName", "Manufacturer",
                        "KVP"):
                if tag in first:
                    setattr(ds, tag, first.get(tag))
            if "StudyInstanceUID" not in ds:
                ds.StudyInstanceUID = generate_uid()
            ds.Modality = "CT"
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.SeriesNumber = 1
            ds.InstanceNumber = i + 1
            # LO: at most 64 characters; the description's end is what tells the series apart.
            ds.SeriesDescription = (f"{first.get('SeriesDescription', 'projections')} "
                                    f"reconstructed, {description}").strip()[-64:]
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.DerivationDescription = derivation
            # The project's frame has y up (anterior); DICOM's patient frame has y posterior.
            ds.ImagePositionPatient = [corner, corner, float(z)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.SliceLocation = float(z)
            ds.PixelSpacing = [grid.pixel_size_mm, grid.pixel_size_mm]
            ds.SliceThickness = round(float(thickness), 4)
            ds.Rows = ds.Columns = grid.size_px
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope, ds.RescaleIntercept = 1, _RESCALE_INTERCEPT_HU
            ds.RescaleType = "HU"
            stored = np.clip(np.round(image.astype(np.float64) - _RESCALE_INTERCEPT_HU),
                             -32768, 32767).astype("<i2")
            ds.PixelData = stored.tobytes()
            ds.save_as(tmp / f"{i + 1:06d}.dcm", enforce_file_format=True)


def denoise_nifti(model: artifact.Model, path: Path, output: Path, batch_size: int = 8,
                  allow_other_spacing: bool = False, allow_unusual_values: bool = False,
                  uncertainty: bool = False, **_: Any) -> Path:
    """A float32 NIfTI of the denoised axial slices (third axis), with the input's affine (and
    with ``uncertainty`` one of the networks' spread at ``uncertainty_path``)."""
    try:
        import nibabel as nib  # noqa: PLC0415
    except ImportError:
        raise InputError(f"{path}: reading NIfTI needs nibabel: pip install nibabel (or "
                         "pip install -e '.[nifti]').") from None
    _require_modality(model, "ct", f"{path} (a NIfTI image)")
    _require_single_image(model, f"{path} (a NIfTI image)")
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
        zooms = image.header.get_zooms()
    except Exception as err:  # noqa: BLE001 - nibabel, gzip and zlib raise many error types
        raise InputError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}); it may "
                         "be truncated or damaged. Write it again.") from None
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or min(data.shape) < 1:
        raise InputError(f"{path}: image of shape {data.shape}; expected one 3-D volume (x, y, "
                         "slice).")
    slices = np.moveaxis(data, 2, 0)
    check_spacing(model.manifest, (float(zooms[0]), float(zooms[1])), str(path),
                  allow_other_spacing)
    check_values(model.manifest, slices, str(path), allow_unusual_values)
    denoised, spread = _run(model, [slices], batch_size, uncertainty)

    def volume(stack: np.ndarray, what: str) -> Any:
        header = image.header.copy()
        header.set_data_dtype(np.float32)
        data = np.moveaxis(stack, 0, 2).reshape(np.asarray(image.dataobj).shape)
        out = nib.Nifti1Image(data.astype(np.float32), image.affine, header)
        out.header.set_slope_inter(1.0, 0.0)
        out.header["descrip"] = f"consensus-jax {model.manifest['kind']}{what}"[:79].encode()
        return out

    _write_file(output, lambda tmp: nib.save(volume(denoised, ""), tmp))
    if spread is not None:
        _write_file(uncertainty_path(output),
                    lambda tmp: nib.save(volume(spread, " spread of the networks"), tmp))
    return output


def denoise_numpy(model: artifact.Model, path: Path, output: Path, batch_size: int = 8,
                  allow_other_spacing: bool = False, allow_unusual_values: bool = False,
                  uncertainty: bool = False, **_: Any) -> Path:
    """``.npy`` stack [S, H, W] or [H, W] in HU (single-image model) or ``.npz`` with x1, x2
    (pair; an optional scalar ``pixel_size_mm`` is checked) -> ``.npy`` (and with
    ``uncertainty`` the networks' spread in HU, same shape, at ``uncertainty_path``). The files
    are read and checked as data preparation reads them (``ct.io.read_numpy_stack``)."""
    from consensus_jax.ct import io as ct_io  # noqa: PLC0415

    _require_modality(model, "ct", f"{path} (a NumPy stack in HU)")
    if path.suffix == ".npz":
        names = model.inputs
    else:
        _require_single_image(model, f"{path} (a NumPy stack)")
        names = [None]
    volumes = []
    for name in names:
        try:
            volumes.append(ct_io.read_numpy_stack(path, key=name, check_hu=False))
        except InputError as err:
            if name is not None and "no array named" in str(err):
                raise InputError(f"{path}: this model needs the arrays {model.inputs}; {err}"
                                 ) from None
            raise
    images = [v.hu for v in volumes]
    if any(x.shape != images[0].shape for x in images):
        raise InputError(f"{path}: x1 {images[0].shape} and x2 {images[1].shape} differ in shape.")
    for name, x in zip(names, images, strict=True):
        check_values(model.manifest, x, f"{path}" + (f" ({name})" if name else ""),
                     allow_unusual_values)
    check_spacing(model.manifest, volumes[0].pixel_size_mm, str(path), allow_other_spacing)
    single = np.load(path, mmap_mode="r").ndim == 2 if path.suffix == ".npy" else False
    denoised, spread = _run(model, images, batch_size, uncertainty)
    denoised = denoised[0] if single else denoised
    _write_file(output, lambda tmp: np.save(tmp, denoised.astype(np.float32)))
    if spread is not None:
        spread = spread[0] if single else spread
        _write_file(uncertainty_path(output), lambda tmp: np.save(tmp, spread.astype(np.float32)))
    return output


def estimate_snr(kspace: np.ndarray, acquired: tuple[int, int]) -> float:
    """The simulation's SNR of one fully sampled slice: peak root-sum-of-squares image magnitude
    over the noise std per complex k-space sample.

    The noise is read off the outermost sixteenth of the readout rows on each side (highest kx) at
    the acquired columns, where an image's signal is sparse: ``median |k| / sqrt(ln 2)``, the
    Rayleigh median of complex Gaussian noise of variance sigma^2, which a few strong edge
    samples do not move.

    Args:
      kspace: complex [C, H, ky], readout oversampling removed.
      acquired: (start, stop) acquired ky columns.
    """
    from consensus_jax.mri.fft import ifftc  # noqa: PLC0415

    k = np.asarray(kspace)[..., acquired[0]:acquired[1]]
    band = max(1, k.shape[-2] // 16)
    edge = np.concatenate([k[..., :band, :], k[..., -band:, :]], axis=-2)
    sigma = float(np.median(np.abs(edge))) / np.sqrt(np.log(2.0))
    rss = np.sqrt(np.sum(np.abs(np.asarray(ifftc(np.asarray(kspace)))) ** 2, axis=0))
    return float(rss.max()) / max(sigma, np.finfo(np.float32).tiny)


def check_mri_input(manifest: dict[str, Any], num_coils: int, image_shape: tuple[int, int],
                    input_acceleration: float, snr: float | None, source: str,
                    allow: bool) -> list[str]:
    """Compares a fastMRI input with the data the model was trained on; returns one line per
    mismatch (each printed to stderr when ``allow``), or raises InputError naming them all.

    Args:
      manifest: the model's manifest (``trained_for``: ``num_coils``, ``image_shape``,
        ``acceleration``, ``snr``; fields that are absent or not numbers are not checked).
      num_coils: the input's receive coils.
      image_shape: (readout rows, ky columns) of the images the model is given.
      input_acceleration: acquired over sampled ky columns of the input (1 when fully sampled):
        the model then sees ``input_acceleration`` times its training acceleration.
      snr: ``estimate_snr`` of the input (mean over slices), or None.
      source: the file, for the messages.
      allow: warn instead of refusing (``--allow_mismatch``).
    """
    trained = manifest.get("trained_for", {})

    def number(key: str) -> float | None:
        value = trained.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else None

    def far(value: float, reference: float, factor: float) -> bool:
        return not 1 / factor <= value / reference <= factor

    lines = []
    coils = number("num_coils")
    if coils is not None and far(num_coils, coils, MRI_TOLERANCE):
        lines.append(f"{num_coils} coils, the model was trained on {coils:g}")
    shape = trained.get("image_shape")
    if shape and any(far(a, b, MRI_TOLERANCE) for a, b in zip(image_shape, shape, strict=True)):
        lines.append(f"matrix {image_shape[0]} x {image_shape[1]}, the model was trained on "
                     f"{shape[0]} x {shape[1]}")
    acceleration = number("acceleration")
    if acceleration is not None and far(input_acceleration, 1.0, MRI_TOLERANCE):
        lines.append(f"the k-space is already undersampled {input_acceleration:.2f}x, so the "
                     f"model would see {input_acceleration * acceleration:.3g}x, it was trained "
                     f"on {acceleration:g}x (give fully sampled k-space)")
    trained_snr = number("snr")
    if trained_snr is not None and snr is not None and far(snr, trained_snr, NOISE_TOLERANCE):
        lines.append(f"noise level: SNR about {snr:.3g} (peak image / noise std per k-space "
                     f"sample), the model was trained at {trained_snr:g}")
    if lines and not allow:
        raise InputError(f"{source} is unlike the data the model was trained on:\n"
                         + "\n".join(f"  {line}" for line in lines)
                         + "\nTrain on data like it, or pass --allow_mismatch to denoise anyway.")
    for line in lines:
        print(f"Warning: {source}: {line}.", file=sys.stderr)
    return lines


def denoise_fastmri(model: artifact.Model, path: Path, output: Path, batch_size: int = 8,
                    seed: int = 0, uncertainty: bool = False, allow_mismatch: bool = False,
                    **_: Any) -> Path:
    """fastMRI multi-coil k-space -> an ``.h5`` with the denoised complex images (cropped to the
    header's reconstruction matrix), after comparing the input with the training data (and
    with ``uncertainty`` an ``.h5`` at ``uncertainty_path`` holding ``spread``, float32
    [S, H, W]: the modulus of the networks' complex spread, in the units of ``denoised``)."""
    import h5py  # noqa: PLC0415
    import jax  # noqa: PLC0415

    from consensus_jax.mri import fastmri, pipeline  # noqa: PLC0415
    from consensus_jax.mri.masks import Undersampling  # noqa: PLC0415

    manifest = model.manifest
    _require_modality(model, "mri", f"{path} (MRI k-space)")
    trained = manifest.get("trained_for", {})
    missing = [k for k in ("acceleration", "num_center_lines") if k not in trained]
    if missing:
        raise InputError(f"{path}: the model's manifest does not record how its training data "
                         f"was undersampled ({', '.join(missing)} missing); export it from a run "
                         "on a prepared MRI dataset.")
    recon = pipeline.ConsensusMRIConfig(
        undersampling=Undersampling(float(trained["acceleration"]),
                                    int(trained["num_center_lines"]),
                                    trained.get("mask_convention", "outer")),
        sense_lambda=float(trained.get("sense_lambda", 1e-2)),
        sense_iterations=int(trained.get("sense_iterations", 30)),
        map_threshold=float(trained.get("map_threshold", 0.05)),
        # A model trained on K-way subsets records K (the pair's manifests record none).
        num_splits=int(trained.get("num_splits", 2)))
    header, num_slices, shape = fastmri.read_fastmri_header(path)
    check_mri_input(manifest, shape[1], (header.recon_matrix[0], shape[3]),
                    _input_acceleration(path, header), _mean_snr(path, num_slices), str(path),
                    allow_mismatch)
    key = jax.random.PRNGKey(seed)
    denoised, spreads = [], []
    masks: dict[str, list[np.ndarray]] = {
        name: [] for name in ("mask", *(f"mask{k + 1}" for k in range(recon.num_splits)))}
    # The images are [recon rows, ky columns]; fastMRI crops them to the reconstruction matrix
    # (368 -> 320 columns for knee) around the centre.
    crop = (header.recon_matrix[0], header.recon_matrix[1])
    with tqdm(total=num_slices, unit="slice", desc="denoise") as bar:
        for s in fastmri.read_fastmri_slices(path):  # one slice in memory at a time
            inputs = pipeline.consensus_inputs(np.asarray(s.kspace),
                                               jax.random.fold_in(key, s.index), recon,
                                               acquired=s.acquired)
            images = [np.asarray(inputs[k])[None] for k in model.inputs]
            for name, x in zip(model.inputs, images, strict=True):
                check_values(manifest, x, f"{path} slice {s.index} ({name})", True)
            if uncertainty:
                z, spread = (y[0] for y in model.denoise_with_uncertainty(
                    *images, batch_size=batch_size))
                # Per channel (real, imaginary) -> the modulus of the complex spread.
                spread = np.sqrt(np.sum(np.square(spread), axis=-1)) * float(inputs["scale"])
                spreads.append(np.asarray(fastmri.center_crop(spread, crop)))
            else:
                z = model.denoise(*images, batch_size=batch_size)[0]
            z = (z[..., 0] + 1j * z[..., 1]) * float(inputs["scale"])
            denoised.append(np.asarray(fastmri.center_crop(z, crop)))
            for name, values in masks.items():
                values.append(np.asarray(inputs[name], np.uint8))
            bar.update(1)
    z = np.stack(denoised).astype(np.complex64)
    magnitude = np.abs(z).astype(np.float32)

    def save(tmp: Path) -> None:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            dst.create_dataset("denoised", data=z)
            dst.create_dataset("denoised_magnitude", data=magnitude)
            for name, values in masks.items():
                dst.create_dataset(name, data=np.stack(values))
            if "ismrmrd_header" in src:
                dst["ismrmrd_header"] = src["ismrmrd_header"][()]
            for k, v in src.attrs.items():
                if k not in FASTMRI_IMAGE_ATTRS:
                    dst.attrs[k] = v
            dst.attrs["max"] = float(magnitude.max())
            dst.attrs["norm"] = float(np.linalg.norm(magnitude))
            dst.attrs["denoised_by"] = (f"consensus-jax {manifest['kind']}, step "
                                        f"{manifest['checkpoint']['step']}, seed {seed}")

    _write_file(output, save)
    if uncertainty:
        def save_spread(tmp: Path) -> None:
            with h5py.File(tmp, "w") as dst:
                dst.create_dataset("spread", data=np.stack(spreads).astype(np.float32))
                dst.create_dataset("mask", data=np.stack(masks["mask"]))
                dst.attrs["spread_of"] = (f"the networks of consensus-jax {manifest['kind']}, "
                                          f"step {manifest['checkpoint']['step']}, seed {seed}, "
                                          f"beside {output.name}")

        _write_file(uncertainty_path(output), save_spread)
    return output


def _input_acceleration(path: Path, header: Any) -> float:
    """Acquired over sampled (non-zero) ky columns of a fastMRI file's k-space (first slice)."""
    import h5py  # noqa: PLC0415

    start, stop = header.acquired_columns
    with h5py.File(path, "r") as f:
        columns = np.any(np.asarray(f["kspace"][0])[..., start:stop] != 0, axis=(0, 1))
    return (stop - start) / max(int(columns.sum()), 1)


#: Slices of a fastMRI file whose noise level is estimated before denoising (spread evenly):
#: enough for a mismatch check, without reading the whole file one extra time.
SNR_SLICES = 5


def _mean_snr(path: Path, num_slices: int) -> float:
    """``estimate_snr`` averaged over up to ``SNR_SLICES`` evenly spread slices of a file."""
    from consensus_jax.mri import fastmri  # noqa: PLC0415

    picked = np.unique(np.linspace(0, num_slices - 1, min(SNR_SLICES, num_slices)).round())
    return float(np.mean([estimate_snr(s.kspace, s.acquired)
                          for s in fastmri.read_fastmri_slices(path, picked.astype(int))]))


def _write_file(output: Path, save: Callable[[Path], Any]) -> Path:
    with outputs.write_output(output, COMMAND) as tmp:
        save(tmp)
    return output


def _require_modality(model: artifact.Model, modality: str, what: str) -> None:
    if model.manifest["modality"] != modality:
        inputs = {"ct": "a CT DICOM series, a NIfTI volume or a .npy stack in HU",
                  "mri": "a fastMRI multi-coil .h5 file"}
        raise InputError(f"{what} is {modality.upper()} data, but this model is for "
                         f"{model.manifest['modality'].upper()}: give it "
                         f"{inputs[model.manifest['modality']]}, or use a "
                         f"{modality.upper()} model.")


def _require_single_image(model: artifact.Model, what: str) -> None:
    if len(model.inputs) > 1:
        raise InputError(
            f"{what} has one reconstructed image per slice, but this model "
            f"({model.manifest['kind']}) needs {len(model.inputs)} split reconstructions "
            f"({', '.join(model.inputs)}). Distil it into one network "
            "(train.py --config.loss.kind=distill --config.loss.teacher=<the pair's workdir> "
            "--config.loss.beta_r=0) and use that.")


def denoise_path(model: artifact.Model, source: str | Path, output: str | Path,
                 overwrite: bool = False, model_path: str | Path | None = None,
                 uncertainty: bool = False, **options: Any) -> Path:
    """Denoises ``source`` (DICOM folder, DICOM-CT-PD projection folder, NIfTI, .npy, .npz,
    fastMRI .h5) into ``output``; with ``uncertainty`` also writes the networks' spread at
    ``uncertainty_path(output)``.

    ``output`` (and the spread's) must not exist, or be an unchanged earlier output of this
    command and ``overwrite`` be set; it must lie apart from ``source`` and ``model_path``
    (neither equal nor nested either way)."""
    if uncertainty:
        require_uncertainty(model)
    source, output, kind = check_paths(source, output, overwrite, model_path, uncertainty)
    denoise = {"dicom": denoise_dicom_series, "projections": denoise_projections,
               "nifti": denoise_nifti, "npy": denoise_numpy, "fastmri": denoise_fastmri}[kind]
    return denoise(model, source, output, uncertainty=uncertainty, **options)


def _floats(values: list[str] | None) -> list[float] | None:
    if not values:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"--slice_positions_mm={','.join(values)}: table positions in mm "
                          "separated by commas, e.g. 110,112.5.") from None


@errors.boundary
def main(argv: list[str] | None = None) -> int:
    from absl import flags  # noqa: PLC0415

    fv = flags.FlagValues()
    flags.DEFINE_string("model", None, "An exported model folder or a training workdir.",
                        flag_values=fv)
    flags.DEFINE_string("input", None, "DICOM series folder, DICOM-CT-PD projection series "
                        "folder, .nii/.nii.gz, .npy, .npz or fastMRI .h5.", flag_values=fv)
    flags.DEFINE_string("output", None, "Where to write the result (same kind as the input).",
                        flag_values=fv)
    flags.DEFINE_string("checkpoint", "best", "For a workdir: best, latest or a step.",
                        flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "Slices per call.", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an unchanged earlier output of this command "
                      "at --output (never another file or folder).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "fastMRI input: seed of the undersampling masks and splits.",
                         flag_values=fv)
    flags.DEFINE_bool("allow_other_spacing", False, "Denoise although the pixel spacing is far "
                      "from the training data's.", flag_values=fv)
    flags.DEFINE_bool("allow_unusual_values", False, "Denoise although CT values look unlike "
                      "HU.", flag_values=fv)
    flags.DEFINE_bool("uncertainty", False, "Also write the spread of the model's networks (an "
                      "uncertainty map; consensus models) beside the output, named "
                      "<output>_uncertainty.", flag_values=fv)
    flags.DEFINE_float("slice_spacing_mm", 1.0, "Projection input: reconstruct every this many "
                       "mm (positions k * spacing) over the range the scan covers.",
                       flag_values=fv)
    flags.DEFINE_integer("num_slices", None, "Projection input: that many slices spread evenly "
                         "over the covered range instead.", flag_values=fv)
    flags.DEFINE_list("slice_positions_mm", None, "Projection input: these table positions "
                      "(mm) instead.", flag_values=fv)
    flags.DEFINE_integer("recon_size_px", None, "Projection input: reconstruction grid size "
                         "(default: the model's training data's).", flag_values=fv)
    flags.DEFINE_float("recon_pixel_size_mm", None, "Projection input: reconstruction pixel size "
                       "(default: the model's training data's).", flag_values=fv)
    flags.DEFINE_bool("allow_mismatch", False, "MRI: denoise although the coil count, matrix "
                      "size, acceleration or noise level is far from the training data's (a "
                      "warning per mismatch instead of a refusal).", flag_values=fv)
    errors.define_verbose_flag(fv)
    errors.parse_flags(fv, argv or sys.argv)
    if not (fv.model and fv.input and fv.output):
        raise ConfigError("usage: python -m consensus_jax.denoise --model=MODEL --input=IN "
                          "--output=OUT [--overwrite] [--uncertainty]")
    from consensus_jax import export  # noqa: PLC0415 - the training stack, for workdirs

    # Before loading anything.
    check_paths(fv.input, fv.output, fv.overwrite, fv.model, fv.uncertainty)
    checkpoint = int(fv.checkpoint) if fv.checkpoint.isdigit() else fv.checkpoint
    model = export.load(fv.model, checkpoint)
    out = denoise_path(model, fv.input, fv.output, overwrite=fv.overwrite, model_path=fv.model,
                       batch_size=fv.batch_size, allow_other_spacing=fv.allow_other_spacing,
                       allow_unusual_values=fv.allow_unusual_values, seed=fv.seed,
                       uncertainty=fv.uncertainty, allow_mismatch=fv.allow_mismatch,
                       slice_spacing_mm=fv.slice_spacing_mm, num_slices=fv.num_slices,
                       slice_positions_mm=_floats(fv.slice_positions_mm),
                       recon_size_px=fv.recon_size_px,
                       recon_pixel_size_mm=fv.recon_pixel_size_mm)
    print(f"Denoised {fv.input} with {model!r} -> {out}")
    if fv.uncertainty:
        print(f"Spread of the networks -> {uncertainty_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
