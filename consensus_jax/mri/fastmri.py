"""Reader for fastMRI multi-coil HDF5 files (NYU knee), one slice at a time.

A fastMRI multi-coil file holds ``kspace`` [slices, coils, kx, ky] complex64 (kx: readout,
2x oversampled, e.g. 640; ky: phase-encode, zero-padded at both edges, e.g. 368), the ISMRMRD XML
header ``ismrmrd_header`` and usually ``reconstruction_rss`` [slices, 320, 320].

What the reader does:
- removes the readout oversampling: inverse FFT along kx, centre crop to the reconstruction
  matrix height (``reconSpace/matrixSize/x``, 320), FFT back; ky is left alone, so the images
  are [320, ky] (crop them to 320 x 320 for display with ``center_crop``);
- finds the acquired ky columns from ``encodingLimits/kspace_encoding_step_1`` (centre, maximum)
  and ``encodedSpace/matrixSize/y``: ``start = y // 2 - centre``, ``stop = start + maximum + 1``.
  The columns outside ``[start, stop)`` are zero padding and must be excluded from the random
  region of the undersampling mask (pass ``acquired`` to ``pipeline.consensus_inputs``).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax.errors import InputError, MissingInputError
from consensus_jax.mri.fft import fftc, ifftc

Array = jax.Array


@dataclass(frozen=True)
class FastMRIHeader:
    """The matrix sizes of a fastMRI acquisition (from its ISMRMRD header).

    Attributes:
      encoded_matrix: (x, y, z) of encodedSpace: k-space size, readout x with oversampling.
      recon_matrix: (x, y, z) of reconSpace: the reconstruction size (320, 320, 1 for knee).
      ky_center: encodingLimits/kspace_encoding_step_1/center.
      ky_maximum: encodingLimits/kspace_encoding_step_1/maximum.
    """

    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    ky_center: int
    ky_maximum: int

    @property
    def acquired_columns(self) -> tuple[int, int]:
        """(start, stop): the ky columns that hold acquired data; the rest is zero padding."""
        start = self.encoded_matrix[1] // 2 - self.ky_center
        return start, start + self.ky_maximum + 1


def _strip_namespaces(root: ET.Element) -> None:
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]


def _int_field(root: ET.Element, path: str, source: str) -> int:
    node = root.find(path)
    if node is None or node.text is None:
        raise InputError(
            f"{source}: ISMRMRD header has no '{path}'; a fastMRI multi-coil header is needed."
        )
    try:
        return int(node.text.strip())
    except ValueError as err:
        raise InputError(f"{source}: header field '{path}' = {node.text!r} is not an integer.") \
            from err


def parse_ismrmrd_header(xml: bytes | str, source: str = "ismrmrd_header") -> FastMRIHeader:
    """Parses the matrix sizes and ky encoding limits from an ISMRMRD XML header.

    Args:
      xml: the header text (the ``ismrmrd_header`` dataset of a fastMRI file).
      source: a name for error messages (the file path).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise InputError(f"{source}: ismrmrd_header is not valid XML ({err}).") from err
    _strip_namespaces(root)
    enc = "encoding/encodedSpace/matrixSize/"
    rec = "encoding/reconSpace/matrixSize/"
    lim = "encoding/encodingLimits/kspace_encoding_step_1/"
    header = FastMRIHeader(
        encoded_matrix=tuple(_int_field(root, enc + a, source) for a in "xyz"),
        recon_matrix=tuple(_int_field(root, rec + a, source) for a in "xyz"),
        ky_center=_int_field(root, lim + "center", source),
        ky_maximum=_int_field(root, lim + "maximum", source),
    )
    start, stop = header.acquired_columns
    if not 0 <= start < stop <= header.encoded_matrix[1]:
        raise InputError(
            f"{source}: kspace_encoding_step_1 centre {header.ky_center} / maximum "
            f"{header.ky_maximum} give acquired ky columns [{start}, {stop}) outside the "
            f"encoded matrix y = {header.encoded_matrix[1]}."
        )
    return header


@dataclass(frozen=True)
class FastMRISlice:
    """One slice of a fastMRI file, readout oversampling removed.

    Attributes:
      kspace: complex64 [C, H, ky], H = reconstruction height (320 for knee).
      index: slice index in the file.
      acquired: (start, stop) acquired ky columns (the rest is zero padding).
      header: the file's matrix sizes.
      path: the file.
    """

    kspace: np.ndarray
    index: int
    acquired: tuple[int, int]
    header: FastMRIHeader
    path: str


def crop_readout(kspace: Array, height: int) -> Array:
    """Removes readout oversampling: k-space [..., C, kx, ky] -> [..., C, height, ky].

    Inverse FFT along kx, centre crop to ``height`` rows (first row ``(kx - height) // 2``, as in
    fastMRI's ``center_crop``), FFT back.
    """
    kx = kspace.shape[-2]
    if height > kx:
        raise InputError(f"Cannot crop readout of {kx} samples to {height} rows.")
    image = ifftc(kspace, axes=(-2,))
    start = (kx - height) // 2
    return fftc(image[..., start:start + height, :], axes=(-2,))


def center_crop(image: Array, shape: tuple[int, int]) -> Array:
    """Centre crop of the last two axes [..., H, W] -> [..., h, w] (fastMRI's convention)."""
    h, w = image.shape[-2:]
    ch, cw = shape
    if ch > h or cw > w:
        raise InputError(f"Crop {shape} is larger than the image {(h, w)}.")
    r0, c0 = (h - ch) // 2, (w - cw) // 2
    return image[..., r0:r0 + ch, c0:c0 + cw]


def _open(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise MissingInputError(f"fastMRI file {path!r} not found; check the path.")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path!r} is not a readable HDF5 file ({err}).") from err


def read_fastmri_header(path: str | os.PathLike) -> tuple[FastMRIHeader, int, tuple[int, ...]]:
    """Validates a fastMRI multi-coil file; returns (header, num_slices, kspace shape).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not HDF5; no ``kspace`` or ``ismrmrd_header``; k-space not 4-D complex
        [slices, coils, kx, ky]; no slices; header sizes inconsistent with the k-space.
    """
    path = os.fspath(path)
    with _open(path) as f:
        for name in ("kspace", "ismrmrd_header"):
            if name not in f:
                raise InputError(
                    f"{path!r}: dataset '{name}' is missing (found {sorted(f.keys())}); "
                    "expected a fastMRI multi-coil file."
                )
        ks = f["kspace"]
        if ks.ndim != 4:
            raise InputError(
                f"{path!r}: 'kspace' has shape {ks.shape}; expected 4-D [slices, coils, kx, ky] "
                "(multi-coil). Single-coil files (3-D) have no coils for SENSE."
            )
        if ks.dtype.kind != "c":
            raise InputError(
                f"{path!r}: 'kspace' has dtype {ks.dtype}; expected complex (complex64)."
            )
        if ks.shape[0] == 0 or 0 in ks.shape[1:]:
            raise InputError(f"{path!r}: 'kspace' has shape {ks.shape}: no slices to read.")
        raw = f["ismrmrd_header"][()]
        shape = tuple(int(s) for s in ks.shape)
    header = parse_ismrmrd_header(raw, source=path)
    if header.encoded_matrix[1] != shape[3]:
        raise InputError(
            f"{path!r}: header encodedSpace y = {header.encoded_matrix[1]} but 'kspace' has "
            f"{shape[3]} ky columns."
        )
    if header.recon_matrix[0] > shape[2]:
        raise InputError(
            f"{path!r}: header reconSpace x = {header.recon_matrix[0]} exceeds the {shape[2]} "
            "readout samples of 'kspace'."
        )
    return header, shape[0], shape


def read_fastmri_slices(path: str | os.PathLike, slices: Sequence[int] | None = None,
                        crop: bool = True) -> Iterator[FastMRISlice]:
    """Yields the slices of a fastMRI multi-coil file one at a time (only one slice in memory).

    The file is validated before the first slice is read (errors are raised by this call, not
    at the first ``next``).

    Args:
      path: the .h5 file.
      slices: slice indices to read (default: all, in order).
      crop: remove readout oversampling (kx -> reconSpace x, usually 640 -> 320).

    Yields:
      FastMRISlice with ``kspace`` complex64 [C, H, ky].
    """
    path = os.fspath(path)
    header, num_slices, _ = read_fastmri_header(path)
    indices = list(range(num_slices)) if slices is None else [int(i) for i in slices]
    bad = [i for i in indices if not 0 <= i < num_slices]
    if bad:
        raise InputError(f"{path!r}: slice indices {bad} outside [0, {num_slices}).")
    crop_fn = jax.jit(crop_readout, static_argnums=1)

    def generate() -> Iterator[FastMRISlice]:
        with _open(path) as f:
            for i in indices:
                kspace = np.asarray(f["kspace"][i]).astype(np.complex64)
                if not np.isfinite(kspace).all():
                    raise InputError(f"{path!r}: slice {i} k-space holds "
                                     f"{int((~np.isfinite(kspace)).sum())} NaN/inf values; the "
                                     "file is damaged. Remove the slice (or the file) and rerun.")
                if not np.any(kspace):
                    raise InputError(f"{path!r}: slice {i} k-space is all zeros (an empty "
                                     "acquisition); remove the slice (or the file) and rerun.")
                if crop:
                    kspace = np.asarray(crop_fn(jnp.asarray(kspace), header.recon_matrix[0]))
                yield FastMRISlice(kspace=kspace, index=i, acquired=header.acquired_columns,
                                   header=header, path=path)

    return generate()
