"""``mri_consensus``: undersampled multi-coil MRI slices split into two zero-filled halves.

Each example is one slice, reconstructed by ``consensus_jax.mri.pipeline.consensus_inputs``: a 4x
Cartesian mask along the phase-encode axis (W) with the centre lines always kept, its sampled outer
lines split at random into two halves whose zero-filled images have their outer lines amplified so
that E[x_i] = x (x1, x2), CG-SENSE of the 4x data (x_est), zero-filling of the 4x data (x_zf), the
fully sampled image (x_ref, the reference) and, for simulations, the noiseless fully sampled image
(x_clean; equal to x_ref for measured data). Every image is combined with the same ACS coil maps
and divided by one per-slice ``scale`` that maps x_est into [-1, 1]; stored as (real, imaginary)
channels. Train/test are split by patient.

Sources (``MriConfig.source``):
  * ``phantom``: built-in procedural sagittal knees (consensus_jax.phantoms.knee). A patient is a
    seed; its slices are the same knee warped smoothly with the slice position (``virtual_knee``),
    so slices of one patient are related and patients differ.
  * ``mni``: axial slices of the MNI152 T1 template shipped in nilearn (``pip install -e
    .[mri-data]``). There is one template brain: a patient is a block of adjacent template slices,
    so train and test patients are different levels of the same brain.
  * ``fastmri``: NYU fastMRI multi-coil knee HDF5 files in ``--manual_dir``, one file per patient.
The simulated sources get coil sensitivities, a smooth phase and complex Gaussian noise from
consensus_jax.mri.simulate. Every random draw of a slice (phase, noise, mask, split) comes from
``slice_key(config, patient_id, slice_index)``; the settings are in the dataset metadata.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from consensus_jax import features
from consensus_jax.errors import ConfigError, InputError, MissingInputError
from consensus_jax.mri.masks import Undersampling
from consensus_jax.mri.pipeline import ConsensusMRIConfig
from consensus_jax.mri.simulate import CoilSimulation
from consensus_jax.phantoms.knee import virtual_knee
from consensus_jax.phantoms.mni import mni152_slices
from data_prep import splits

slice_key = splits.slice_key  # a slice's random key, also used by data_prep and the tests

SOURCES = ("phantom", "mni", "fastmri")
#: Simulated SNR of each built-in preset, from `python -m data_prep.mri --calibrate
#: --config=<name>` (no learning involved): the noise at which SENSE's RMSE is about 1.06 x
#: zero-filling's and zero-filling's SSIM is the higher, as in the paper's Table 2 on real knees
#: (the sweeps: docs/mri_calibration.md). The *_snr100 presets keep the earlier low-noise setting.
CALIBRATED_SNR = {"quick": 18.0, "knee": 33.0, "mni": 32.0}
#: Axial range of the MNI152 template (1 mm slices) split into "patients": the cerebrum.
MNI_Z_RANGE = (40, 141)


@dataclasses.dataclass(eq=False)
class MriConfig(tfds.core.BuilderConfig):
    """One dataset variant. Images are [height_px, width_px], phase encode along the width.

    Attributes:
      source: "phantom", "mni" or "fastmri".
      height_px, width_px: image size (readout x phase encode). Built-in sources are square;
        fastMRI knee: 320 (readout after removing the 2x oversampling) x 368 (ky columns; files
        with other widths are zero-padded or cropped in k-space around ky = 0).
      num_coils: simulated receive coils (paper's knee data: 15); simulations only.
      snr: simulated peak image magnitude / complex noise std per k-space sample.
      acceleration: R of the mask (paper: 4).
      num_center_lines: ACS lines kept in the mask and in both halves (paper: 48).
      mask_convention: "outer" (outer lines sampled with probability 1 / R; the paper's "8x each"
        halves amplified by 8) or "fastmri" (R counts the centre lines too).
      sense_lambda, sense_iterations: CG-SENSE Tikhonov weight and iterations (x_est).
      map_threshold: coil-map support, relative to the peak of the low-resolution RSS.
      num_train_patients, num_test_patients: paper 16 and 4.
      num_validation_patients: whole patients held out for model selection (not in the paper);
        listed after the test patients.
      extra_train_patients: more training patients, listed after the validation patients, so
        that a larger training set keeps every other patient (and so the test and validation
        sets) as they were; knee and fastmri sources (the mni source divides one template
        among its listed patients).
      slices_per_patient: slices per patient (paper: 31 to 35); fastmri: 0 takes every slice
        of a file, n > 0 at most n slices drawn at random.
      validation_holdout_fraction: on validation slices only, this fraction of the measured
        outer lines (in expectation) is kept out of both halves, x_est and x_zf, and stored
        with the coil maps for the k-space validation criterion (docs/validation.md); their
        mask, halves and images are those of a slice without held-out lines. 0: none.
      seed: selects virtual patients, slices and every random draw of every slice.
      num_splits: K, the subsets the sampled outer lines are dealt into at random (x1 .. xK,
        centre lines in each, outer lines amplified by K / p); the paper's halves: 2.
    """

    source: str = "phantom"
    height_px: int = 320
    width_px: int = 320
    num_coils: int = 15
    snr: float = 100.0
    acceleration: float = 4.0
    num_center_lines: int = 48
    mask_convention: str = "outer"
    sense_lambda: float = 1e-2
    sense_iterations: int = 30
    map_threshold: float = 0.05
    num_train_patients: int = 16
    num_test_patients: int = 4
    num_validation_patients: int = 2
    extra_train_patients: int = 0
    slices_per_patient: int = 32
    seed: int = 0
    num_splits: int = 2
    validation_holdout_fraction: float = 0.2

    def coil_simulation(self) -> CoilSimulation:
        return CoilSimulation(num_coils=int(self.num_coils), snr=float(self.snr))

    def reconstruction(self, validation: bool = False) -> ConsensusMRIConfig:
        """Mask, split and SENSE settings (a frozen dataclass; static under jit); with
        ``validation`` the held-out lines of a validation slice too."""
        holdout = float(self.validation_holdout_fraction) if validation else 0.0
        return ConsensusMRIConfig(
            validation_holdout_fraction=holdout,
            undersampling=Undersampling(float(self.acceleration), int(self.num_center_lines),
                                        self.mask_convention),
            sense_lambda=float(self.sense_lambda), sense_iterations=int(self.sense_iterations),
            map_threshold=float(self.map_threshold), num_splits=int(self.num_splits))

    def validate(self) -> None:
        """Raises ConfigError naming the field, the bad value and the fix: checked before TFDS
        starts building, so that a bad value never fails halfway through a build."""
        def bad(field: str, rule: str) -> ConfigError:
            return ConfigError(f"--config.{field}={getattr(self, field)!r}: {rule}")

        def finite(value: Any) -> bool:
            return isinstance(value, (int, float)) and math.isfinite(value)

        if self.source not in SOURCES:
            raise ConfigError(f"MriConfig.source must be one of {SOURCES}, got {self.source!r}.")
        for field, low in (("height_px", 8), ("width_px", 8), ("num_coils", 1),
                           ("num_center_lines", 1), ("sense_iterations", 1), ("seed", 0),
                           ("num_splits", 2)):
            if getattr(self, field) < low:
                raise bad(field, f"must be a whole number >= {low}.")
        if not (finite(self.snr) and self.snr > 0):
            raise bad("snr", "must be a positive number (the peak image magnitude over the "
                      "noise std per k-space sample, e.g. 30); a negative or zero noise level "
                      "does not exist.")
        if not (finite(self.acceleration) and self.acceleration > 1):
            raise bad("acceleration", "must be a number > 1 (the undersampling factor R; the "
                      "paper's is 4).")
        if not (finite(self.sense_lambda) and self.sense_lambda >= 0):
            raise bad("sense_lambda", "must be a number >= 0 (the Tikhonov weight of SENSE).")
        if not (finite(self.map_threshold) and 0 <= self.map_threshold < 1):
            raise bad("map_threshold", "must lie in [0, 1) (a fraction of the peak RSS).")
        if not (finite(self.validation_holdout_fraction)
                and 0 <= self.validation_holdout_fraction < 1):
            raise bad("validation_holdout_fraction", "must lie in [0, 1) (a fraction of the "
                      "measured outer lines of a validation slice; 0.2 is the default).")
        if self.source != "fastmri" and self.height_px != self.width_px:
            raise ConfigError(f"The {self.source!r} source makes square images: set height_px = "
                              f"width_px (got {self.height_px} x {self.width_px}).")
        splits.check_patient_counts(self.num_train_patients, self.num_test_patients,
                             self.num_validation_patients)
        if self.extra_train_patients < 0:
            raise bad("extra_train_patients", "must be a whole number >= 0.")
        if self.extra_train_patients and self.source == "mni":
            raise bad("extra_train_patients", "the mni source divides one template's slices "
                      "among its listed patients, so extra patients would change every split; "
                      "raise num_train_patients instead (a new test set) or use the knee source.")
        if self.slices_per_patient < (0 if self.source == "fastmri" else 1):
            raise ConfigError(f"slices_per_patient={self.slices_per_patient}: ask for at least one "
                              "slice per patient (fastmri: 0 takes every slice).")
        if self.num_center_lines >= self.width_px:
            raise ConfigError(f"num_center_lines={self.num_center_lines} leaves no outer lines of "
                              f"the width_px={self.width_px} phase-encode columns; lower it.")
        self.reconstruction()
        if self.validation_holdout_fraction:
            from consensus_jax.mri.masks import check_holdout_fraction, outer_region

            us = self.reconstruction().undersampling
            try:
                check_holdout_fraction(float(self.validation_holdout_fraction), us,
                                       int(outer_region(self.width_px, us).sum())
                                       + us.num_center_lines)
            except ValueError as err:
                raise bad("validation_holdout_fraction", str(err)) from None
        if self.source != "fastmri":
            self.coil_simulation()

    def metadata(self) -> dict[str, Any]:
        simulated = self.source != "fastmri"
        return {
            "modality": "mri", "source": self.source,
            "image_shape": [self.height_px, self.width_px],
            "axes": "rows = readout (kx), columns = phase encode (ky); mask is over columns",
            "num_coils": self.num_coils if simulated else "from the files (fastMRI knee: 15)",
            "snr": self.snr if simulated else "measured data",
            "acceleration": self.acceleration, "num_center_lines": self.num_center_lines,
            "mask_convention": self.mask_convention,
            "half_amplification": "1 / p_half on each half's outer lines (8 at 4x, 'outer')",
            "sense_lambda": self.sense_lambda, "sense_iterations": self.sense_iterations,
            "coil_maps": f"ACS lines, Hann window, support > {self.map_threshold} x peak RSS; the "
                         "same maps combine every image of a slice",
            "map_threshold": self.map_threshold,
            "validation_holdout_fraction": self.validation_holdout_fraction,
            "heldout": "validation slices: measured outer lines kept out of both halves, x_est "
                       "and x_zf (heldout_lines), their k-space / scale (heldout_kspace) and the "
                       "coil maps (maps), for the k-space validation criterion",
            "normalisation": "every image divided by scale = max(|Re x_est|, |Im x_est|) of its "
                             "slice (x_est in [-1, 1]); multiply by scale for k-space units",
            "x_clean": "noiseless fully sampled image" if simulated else "equal to x_ref",
            "seed": self.seed, "num_train_patients": self.num_train_patients,
            "num_test_patients": self.num_test_patients,
            "num_validation_patients": self.num_validation_patients,
            **({"extra_train_patients": self.extra_train_patients}
               if self.extra_train_patients else {}),
            "slices_per_patient": self.slices_per_patient,
            # Datasets of the paper's pair carry no num_splits, as before it was a setting.
            **({"num_splits": self.num_splits,
                "half_amplification": f"K / p on each of the K = {self.num_splits} subsets' "
                                      "outer lines"} if self.num_splits != 2 else {}),
        }


def _preset(name: str, description: str, **kwargs) -> MriConfig:
    config = MriConfig(name=name, version=tfds.core.Version(splits.VERSION),
                       description=description, **kwargs)
    config.validate()
    return config


def _quick_knees(name: str, snr: float) -> MriConfig:
    return _preset(name, f"CPU demo: 128 px knees, 8 coils, 16 centre lines, 8+2(+1 validation) "
                   f"patients x 8 slices, SNR {snr:g}.", height_px=128, width_px=128,
                   num_coils=8, num_center_lines=16, num_train_patients=8, num_test_patients=2,
                   num_validation_patients=1, slices_per_patient=8, snr=snr)


def _paper_knees(name: str, snr: float) -> MriConfig:
    return _preset(name, f"The paper's setting: 320 px knees, 15 coils, 48 centre lines, 4x, "
                   f"16+4(+2 validation) patients x 32 slices, SNR {snr:g}.", snr=snr)


def _mni(name: str, snr: float) -> MriConfig:
    return _preset(name, f"MNI152 T1 template (nilearn), 128 px, 8 coils, 16 centre lines, 8+2"
                   f"(+1 validation) blocks of adjacent slices x 8, SNR {snr:g}.", source="mni",
                   height_px=128, width_px=128, num_coils=8, num_center_lines=16,
                   num_train_patients=8, num_test_patients=2, num_validation_patients=1,
                   slices_per_patient=8, snr=snr)


PRESETS = {
    "tiny": _preset("tiny", "Tests: 64 px knees, 4 coils, 8 centre lines, 2+1(+1 validation) "
                    "patients x 3 slices.", height_px=64, width_px=64, num_coils=4,
                    num_center_lines=8, num_train_patients=2, num_test_patients=1,
                    num_validation_patients=1, slices_per_patient=3),
    "quick": _quick_knees("quick", CALIBRATED_SNR["quick"]),
    "quick_snr100": _quick_knees("quick_snr100", 100.0),
    "knee": _paper_knees("knee", CALIBRATED_SNR["knee"]),
    "knee_snr100": _paper_knees("knee_snr100", 100.0),
    "mni": _mni("mni", CALIBRATED_SNR["mni"]),
    "mni_snr100": _mni("mni_snr100", 100.0),
    "fastmri": _preset("fastmri", "Your fastMRI multi-coil knee files (--manual_dir: one .h5 "
                       "per patient), 320 x 368, 48 centre lines, 4x, 16+4(+2 "
                       "validation) patients, every slice.", source="fastmri", height_px=320,
                       width_px=368,
                       slices_per_patient=0),
}


# ------------------------------------------------------------------------------------------
# Sources: the list of patients and the slices of each.


PatientSource = splits.PatientSource


def _require_nilearn() -> None:
    try:
        import nilearn  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "The 'mni' config reads the MNI152 template shipped with nilearn, which is not "
            "installed: `pip install -e .[mri-data]` (or use --config=quick / knee).") from err


def list_patients(config: MriConfig, manual_dir: Path | None) -> list[PatientSource]:
    """Patients of every split (train first), deterministic in ``config.seed``."""
    config.validate()
    n_train, n_test = config.num_train_patients, config.num_test_patients
    n_all = splits.num_patients(config)
    n_val = config.num_validation_patients
    split = lambda i: splits.split_of(i, n_train, n_test, n_val)  # noqa: E731
    num = config.slices_per_patient
    if config.source == "phantom":
        out = []
        for i in range(n_all):
            seed = 1000 * config.seed + i
            out.append(PatientSource(f"knee-{seed:04d}", i, split(i), tuple(range(num)),
                                     str(seed)))
        return out
    if config.source == "mni":
        _require_nilearn()
        z0, z1 = MNI_Z_RANGE
        n = n_all
        if n * num > z1 - z0:
            raise ConfigError(f"{n} patients x {num} slices exceed the {z1 - z0} template slices "
                              f"z in [{z0}, {z1}); lower slices_per_patient or the patient counts.")
        edges = np.linspace(z0, z1, n + 1).round().astype(int)
        order = np.random.default_rng([config.seed, 13]).permutation(n)
        out = []
        for i, block in enumerate(order):
            lo, hi = int(edges[block]), int(edges[block + 1])
            slices = np.linspace(lo, hi - 1, num).round().astype(int)
            out.append(PatientSource(f"mni152-z{lo:03d}-{hi - 1:03d}", i, split(i),
                                     tuple(int(z) for z in slices), "mni152"))
        return out
    return _fastmri_patients(config, manual_dir)


def _fastmri_patients(config: MriConfig, manual_dir: Path | None) -> list[PatientSource]:
    from consensus_jax.mri.fastmri import read_fastmri_header

    if manual_dir is None or not Path(manual_dir).is_dir():
        raise MissingInputError(
            f"The 'fastmri' config reads your fastMRI multi-coil knee files from --manual_dir, "
            f"which is {manual_dir!r}. Point it at a folder with one .h5 file per patient.")
    files = sorted(Path(manual_dir).glob("*.h5"))
    n_train, n_test = config.num_train_patients, config.num_test_patients
    n_all = splits.num_patients(config)
    if len(files) < n_all:
        raise InputError(f"{manual_dir} holds {len(files)} .h5 files; the config needs "
                         f"{n_train} + {n_test} + {config.num_validation_patients} + "
                         f"{config.extra_train_patients} patients (train, test, validation, "
                         "extra train). Add files or lower num_train_patients/"
                         "num_test_patients/num_validation_patients/extra_train_patients "
                         "(--config.<field>=... --config.name=...).")
    order = np.random.default_rng([config.seed, 11]).permutation(len(files))
    out = []
    for i, k in enumerate(order[:n_all]):
        path = files[k]
        header, num_slices, _ = read_fastmri_header(path)
        if header.recon_matrix[0] != config.height_px:
            raise InputError(f"{path}: reconSpace x = {header.recon_matrix[0]} rows, but the "
                             f"config has height_px={config.height_px}; rebuild with "
                             f"--config.height_px={header.recon_matrix[0]} "
                             "--config.name=<new name>.")
        fit_width_columns(header.encoded_matrix[1], header.acquired_columns, config.width_px,
                          str(path))
        slices = np.arange(num_slices)
        if 0 < config.slices_per_patient < num_slices:
            rng = np.random.default_rng([config.seed, zlib.crc32(path.stem.encode())])
            slices = np.sort(rng.choice(num_slices, config.slices_per_patient, replace=False))
        out.append(PatientSource(path.stem, i, splits.split_of(
                                     i, n_train, n_test, config.num_validation_patients),
                                 tuple(int(s) for s in slices), str(path)))
    return out


def fit_width_columns(num_columns: int, acquired: tuple[int, int], width: int,
                      source: str) -> tuple[int, tuple[int, int]]:
    """Column offset and acquired columns after zero-padding / cropping ky to ``width``.

    ky = 0 sits at column ``num_columns // 2`` (centred FFT) and moves to ``width // 2``; only
    zero-padded columns may be cropped.

    Returns:
      (offset, (start, stop)): new column = old column + offset; the acquired columns after it.
    """
    offset = width // 2 - num_columns // 2
    start, stop = acquired[0] + offset, acquired[1] + offset
    if start < 0 or stop > width:
        raise InputError(f"{source}: the acquired ky columns [{acquired[0]}, {acquired[1]}) of "
                         f"{num_columns} do not fit width_px={width}; rebuild with "
                         f"--config.width_px={num_columns} --config.name=<new name>.")
    return offset, (start, stop)


def fit_width(kspace: np.ndarray, acquired: tuple[int, int], width: int, source: str
              ) -> tuple[np.ndarray, tuple[int, int]]:
    """k-space [C, H, ky] -> [C, H, width], ky = 0 at column width // 2, and its acquired range."""
    num = kspace.shape[-1]
    offset, new_acquired = fit_width_columns(num, acquired, width, source)
    out = np.zeros((*kspace.shape[:-1], width), kspace.dtype)
    lo, hi = max(0, offset), min(width, num + offset)
    out[..., lo:hi] = kspace[..., lo - offset:hi - offset]
    return out, new_acquired


def load_images(config: MriConfig, source: PatientSource) -> np.ndarray:
    """[S, H, W] magnitude images (0..1) of a built-in patient's slices."""
    if config.source == "phantom":
        stack = virtual_knee(int(source.location), max(source.slice_indices) + 1, config.height_px)
        return stack[list(source.slice_indices)]
    if config.source == "mni":
        return mni152_slices(config.height_px, source.slice_indices)
    raise ValueError(f"load_images is for the built-in sources, not {config.source!r}.")


def _example(out: dict[str, Any]) -> dict[str, np.ndarray]:
    num_splits = sum(1 for k in out if k.startswith("mask") and k[4:].isdigit())
    example = {k: np.asarray(out[k], np.float32)
               for k in features.image_keys("mri", num_splits) if k in out}
    example.setdefault("x_clean", example["x_ref"])
    example["scale"] = np.float32(out["scale"])
    example["mask"] = np.asarray(out["mask"], np.uint8)
    h, w = example["x_ref"].shape[:2]
    if "heldout" in out:
        example.update(features.mri_heldout_example(h, w, out["heldout"], out["heldout_kspace"],
                                                    out["maps"]))
    else:
        example.update(features.mri_heldout_example(h, w))
    return example


def patient_examples(config: MriConfig, source: PatientSource
                     ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(slice_index, features of the slice) for every slice of a patient, one at a time."""
    import jax.numpy as jnp

    from consensus_jax.mri.pipeline import consensus_inputs
    from consensus_jax.mri.simulate import simulate_slice

    recon = config.reconstruction(validation=source.split == "validation")
    if config.source == "fastmri":
        from consensus_jax.mri.fastmri import read_fastmri_slices

        for s in read_fastmri_slices(source.location, source.slice_indices):
            kspace, acquired = fit_width(s.kspace, s.acquired, config.width_px, source.location)
            key = slice_key(config, source.patient_id, s.index)
            yield s.index, _example(consensus_inputs(jnp.asarray(kspace), key, recon,
                                                     acquired=acquired))
        return
    coils = config.coil_simulation()
    images = load_images(config, source)
    for image, index in zip(images, source.slice_indices, strict=True):
        key = slice_key(config, source.patient_id, index)
        yield index, _example(simulate_slice(jnp.asarray(image), key, coils, recon))


class Builder(splits.PatientSplitBuilder):
    """Split undersampled MRI pairs for consensus training (Wu et al. 2019, Section 3.1)."""

    BUILDER_CONFIGS = list(PRESETS.values())
    MANUAL_SOURCES = frozenset({"fastmri"})
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Only for the fastmri config: put the NYU fastMRI multi-coil knee .h5 files (one per "
        "patient, e.g. from multicoil_train) into --manual_dir.")

    list_patients = staticmethod(list_patients)
    patient_examples = staticmethod(patient_examples)

    def features(self, config):
        return features.mri_features(config.height_px, config.width_px, config.num_splits)
