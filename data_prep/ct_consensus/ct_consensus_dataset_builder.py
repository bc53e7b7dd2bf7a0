"""``ct_consensus``: simulated quarter-dose CT slices split into odd/even-view FBP pairs.

Each example is one slice: the quarter-dose views split in two halves, each reconstructed by
Hann-filtered FBP (x1, x2), the quarter-dose FBP of all views (x_est), the full-dose FBP (x_full,
the paper's reference), the FBP of the noiseless projections (x_clean) and the source image
(x_true), in HU / 1000, plus patient and slice ids. Train/test are split by patient.

Sources (``CtConfig.source``):
  * ``phantom``: built-in procedural abdomen virtual patients (consensus_jax.phantoms.abdomen).
  * ``dicom``: ``--manual_dir`` holds one sub-folder of CT DICOM files per patient (e.g. the
    full-dose images of the LDCT Grand Challenge / TCIA LDCT-and-Projection-data).
  * ``numpy``: ``--manual_dir`` holds one .npy/.npz stack in HU per patient. Its pixel size
    is the .npz's scalar array ``pixel_size_mm``, else ``--config.numpy_pixel_size_mm``.
  * ``projections``: measured raw data, the paper's own CT data: ``--manual_dir`` holds one
    folder per patient with its full- and quarter-dose DICOM-CT-PD projection series (the LDCT
    data set's layout, ``<patient>/full_DICOM-CT-PD/`` and ``<patient>/quarter_DICOM-CT-PD/``,
    or any folders below the patient's that the ``full_dose_glob`` / ``quarter_dose_glob``
    patterns pick out). Each chosen slice is rebinned from the helical views and reconstructed
    (``consensus_jax.ct.projection_input``); nothing is simulated.
For the other sources the scan is simulated from the source images (Poisson full dose, binomial
thinning to the low dose), with the geometry and photon counts in the dataset metadata
(metadata.json). Measured projections have no noiseless image: there x_clean and x_true hold the
full-dose FBP (x_full), and evaluation scores against it once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from consensus_jax import features
from consensus_jax.ct import ctpd
from consensus_jax.ct import geometry as ct_geometry
from consensus_jax.ct import io as ct_io
from consensus_jax.ct import split as ct_split
from consensus_jax.errors import ConfigError, InputError, MissingInputError
from consensus_jax.phantoms import abdomen
from data_prep import splits

slice_key = splits.slice_key  # a slice's random key, also used by data_prep and the tests

#: Full-dose photons per ray of each preset, from `python -m data_prep.ct --calibrate
#: --config=<name>` (every virtual patient): quarter-dose FBP vs full-dose FBP RMSE of about
#: 27.6 HU over the image, the paper's FBP row (the sweeps: docs/EXPERIMENTS.md). The dicom and
#: numpy presets use the paper's value.
CALIBRATED_PHOTONS = {"tiny": 1.3e4, "quick": 2.5e4, "paper": 5.0e4}
SOURCES = ("phantom", "dicom", "numpy", "projections")
#: Fields that only the projections source reads (recorded in its metadata only).
PROJECTION_FIELDS = ("full_dose_glob", "quarter_dose_glob", "slice_spacing_mm",
                     "slice_positions_mm", "shuffle_patients", "ffs")


@dataclasses.dataclass(eq=False)
class CtConfig(tfds.core.BuilderConfig):
    """One dataset variant. Lengths in mm, angles in radians, images in HU on disk / 1000.

    Attributes:
      source: "phantom", "dicom", "numpy" or "projections".
      size_px: reconstruction grid side (square).
      pixel_size_mm: reconstruction pixel size; None: 380 mm / size_px (the phantom's FOV).
      geometry: "fan" (equiangular detector of the Grand Challenge scanner) or "parallel".
      num_views: views per rotation (paper: 2304, split into 1152 odd and 1152 even).
      detector_binning: channels combined into one (736 channels / binning), for coarse grids.
      photons_per_ray: full-dose I0; the low dose is ``dose_fraction`` of it.
      dose_fraction: 0.25 for quarter dose.
      electronic_noise_counts: std of the additive electronic noise, counts.
      split: view split registered in consensus_jax.ct.split ("odd_even": the paper).
      num_train_patients, num_test_patients: paper 8 and 2.
      num_validation_patients: whole patients held out for model selection (not in the paper;
        label-free, see consensus_jax/experiment.py); listed after the test patients.
      extra_train_patients: more training patients, listed after the validation patients, so
        that a larger training set keeps every other patient (and so the test set) as it was.
      slices_per_patient: paper 50, drawn at random per patient from ``seed``.
      seed: selects virtual patients, slices and every noise realisation.
      numpy_pixel_size_mm: pixel size (mm) of the numpy source's stacks that store none (a
        ``.npy``, or an ``.npz`` without a scalar array ``pixel_size_mm``); a stored one wins.
      full_dose_glob, quarter_dose_glob: projections source: which folder below a patient's
        holds each series, as glob patterns matched case-insensitively against the folder's
        path relative to the patient folder; several patterns separated by "|".
      slice_spacing_mm: projections source: slices lie at table positions k * spacing (mm), k
        an integer (the slice index), inside the range the scan covers.
      slice_positions_mm: projections source: comma-separated table positions (mm, on the
        spacing's grid) used for every patient instead of ``slices_per_patient`` random ones.
      shuffle_patients: projections source: assign patients to the splits in a seeded random
        order (as the dicom and numpy sources do); False: in the sorted order of their folder
        names (train first, then test, then validation).
      ffs: projections source: flying-focal-spot handling of the rebinning
        (``consensus_jax.ct.rebin``; "native": each focal spot its own source).
      num_splits: K, the quarter-dose view subsets reconstructed by the same Hann FBP: x1 .. xK,
        xk from the views v with v mod K = k - 1 (2: the paper's odd/even halves; K > 2 needs
        split="odd_even"). x_est stays the FBP of all views.
    """

    source: str = "phantom"
    size_px: int = 256
    pixel_size_mm: float | None = None
    geometry: str = "fan"
    num_views: int = 2304
    detector_binning: int = 1
    photons_per_ray: float = 5.0e4
    dose_fraction: float = 0.25
    electronic_noise_counts: float = 0.0
    split: str = "odd_even"
    num_train_patients: int = 8
    num_test_patients: int = 2
    num_validation_patients: int = 2
    extra_train_patients: int = 0
    slices_per_patient: int = 50
    seed: int = 0
    numpy_pixel_size_mm: float | None = None
    full_dose_glob: str = "*full*"
    quarter_dose_glob: str = "*quarter*|*low*dose*"
    slice_spacing_mm: float = 1.0
    slice_positions_mm: str = ""
    shuffle_patients: bool = True
    ffs: str = "native"
    num_splits: int = 2

    @property
    def grid_pixel_size_mm(self) -> float:
        return self.pixel_size_mm or abdomen.default_pixel_size_mm(self.size_px)

    def scan_geometry(self) -> ct_geometry.FanBeamGeometry | ct_geometry.ParallelBeamGeometry:
        grid = ct_geometry.ImageGrid(self.size_px, self.grid_pixel_size_mm)
        if self.geometry == "fan":
            base = ct_geometry.FanBeamGeometry()
            return ct_geometry.FanBeamGeometry(
                image=grid, num_views=self.num_views,
                num_detectors=math.ceil(base.num_detectors / self.detector_binning),
                detector_spacing_mm=base.detector_spacing_mm * self.detector_binning)
        if self.geometry == "parallel":
            width_mm = math.sqrt(2.0) * self.size_px * self.grid_pixel_size_mm
            dets = int(math.ceil(width_mm / self.grid_pixel_size_mm)) | 1
            return ct_geometry.ParallelBeamGeometry(
                image=grid, num_views=self.num_views, num_detectors=dets,
                detector_spacing_mm=self.grid_pixel_size_mm, angular_range_rad=math.pi)
        raise ConfigError(f"CtConfig.geometry must be 'fan' or 'parallel', got {self.geometry!r}.")

    def validate(self) -> None:
        """Raises ConfigError naming the field (as its ``--config.<field>`` flag), the bad value
        and the allowed range: checked before TFDS starts building, so that a bad value never
        fails halfway through a build."""
        def bad(field: str, rule: str) -> ConfigError:
            return ConfigError(f"--config.{field}={getattr(self, field)!r}: {rule}")

        def finite(value: Any) -> bool:
            return isinstance(value, (int, float)) and math.isfinite(value)

        if self.source not in SOURCES:
            raise bad("source", f"must be one of {', '.join(SOURCES)}.")
        if self.geometry not in ("fan", "parallel"):
            raise bad("geometry", "must be 'fan' or 'parallel'.")
        if self.split not in ct_split.available_splits():
            raise bad("split", f"must be one of {', '.join(ct_split.available_splits())}.")
        for field, low in (("size_px", 8), ("num_views", 2), ("detector_binning", 1),
                           ("slices_per_patient", 1), ("num_splits", 2)):
            if getattr(self, field) < low:
                raise bad(field, f"must be a whole number >= {low}.")
        for field in ("pixel_size_mm", "numpy_pixel_size_mm"):
            value = getattr(self, field)
            if value is not None and not (finite(value) and value > 0):
                raise bad(field, "must be a positive number of mm per pixel (or left unset).")
        if not (finite(self.photons_per_ray) and self.photons_per_ray > 0):
            raise bad("photons_per_ray", "must be a positive number of photons per detector ray "
                      "at full dose, e.g. 5e4.")
        if not (finite(self.dose_fraction) and 0 < self.dose_fraction <= 1):
            raise bad("dose_fraction", "must lie in (0, 1] (0.25: quarter dose).")
        if not (finite(self.electronic_noise_counts) and self.electronic_noise_counts >= 0):
            raise bad("electronic_noise_counts", "must be a number >= 0 (counts).")
        if self.seed < 0:
            raise bad("seed", "must be a whole number >= 0.")
        if self.source == "projections":
            from consensus_jax.ct import rebin as ct_rebin

            if self.geometry != "fan":
                raise bad("geometry", "must be 'fan' for raw projections (rebinned to fan beam).")
            if not (finite(self.slice_spacing_mm) and self.slice_spacing_mm > 0):
                raise bad("slice_spacing_mm", "must be a positive number of mm.")
            if self.ffs not in ct_rebin.FFS_MODES:
                raise bad("ffs", f"must be one of {', '.join(ct_rebin.FFS_MODES)}.")
            for field in ("full_dose_glob", "quarter_dose_glob"):
                if not getattr(self, field).strip(" |"):
                    raise bad(field, "must be a glob pattern, e.g. '*full*'.")
            positions_on_grid(self)
        if self.num_splits != 2 and self.source == "projections":
            raise bad("num_splits", "raw projections are split into their odd/even views "
                      "only: leave num_splits at 2.")
        if self.num_splits != 2 and self.split != "odd_even":
            raise bad("num_splits", f"K > 2 takes the views k mod K, which only split="
                      f"'odd_even' generalises; got split={self.split!r}.")
        if self.num_splits > self.num_views:
            raise bad("num_splits", f"must be <= num_views ({self.num_views}).")
        splits.check_patient_counts(self.num_train_patients, self.num_test_patients,
                                    self.num_validation_patients)
        if self.extra_train_patients < 0:
            raise bad("extra_train_patients", "must be a whole number >= 0.")

    def metadata(self) -> dict[str, Any]:
        geom = self.scan_geometry()
        measured = self.source == "projections"
        return {
            "modality": "ct", "units": "HU / 1000", "source": self.source,
            "geometry_kind": self.geometry,
            "geometry": {k: v for k, v in dataclasses.asdict(geom).items()
                         if k != "view_angles_rad"},
            **({"projections": {
                "geometry": "each series' own, rebinned to a full-scan fan beam (the geometry "
                            "above is the nominal scanner's; only its image grid applies)",
                "references": "x_clean and x_true are the full-dose FBP",
                **{k: getattr(self, k) for k in PROJECTION_FIELDS}}} if measured else {
                "photons_per_ray_full_dose": self.photons_per_ray,
                "electronic_noise_counts": self.electronic_noise_counts}),
            "dose_fraction": self.dose_fraction,
            "split": self.split, "seed": self.seed,
            "num_train_patients": self.num_train_patients,
            "num_test_patients": self.num_test_patients,
            "num_validation_patients": self.num_validation_patients,
            "slices_per_patient": self.slices_per_patient,
            **({"extra_train_patients": self.extra_train_patients}
               if self.extra_train_patients else {}),
            **({"numpy_pixel_size_mm": self.numpy_pixel_size_mm}
               if self.numpy_pixel_size_mm is not None else {}),
            # Datasets of the paper's pair carry no num_splits, as before it was a setting.
            **({"num_splits": self.num_splits} if self.num_splits != 2 else {}),
            "fbp_filter": "ramp apodised by a Hann window, cutoff 1.0 (Nyquist)",
        }


def _preset(name: str, description: str, **kwargs) -> CtConfig:
    photons = CALIBRATED_PHOTONS.get(name)
    if photons is not None:
        kwargs.setdefault("photons_per_ray", photons)
    return CtConfig(name=name, version=tfds.core.Version(splits.VERSION), description=description,
                    **kwargs)


PRESETS = {
    "tiny": _preset("tiny", "Tests: 64 px, 180 views, 2+1(+1 validation) virtual patients x "
                    "3 slices.",
                    size_px=64, num_views=180, detector_binning=8, num_train_patients=2,
                    num_test_patients=1, num_validation_patients=1, slices_per_patient=3),
    "quick": _preset("quick", "CPU demo: 256 px, 1152 views (736 channels binned by 2), 8+2 "
                     "(+1 validation) virtual patients x 8 slices.", size_px=256, num_views=1152,
                     detector_binning=2, num_validation_patients=1, slices_per_patient=8),
    # The quick set's patients, slices and noise (slice keys depend on the seed alone) split
    # into K = 3 and 4 view subsets.
    **{f"quick_k{k}": _preset(f"quick_k{k}", f"The quick set (same patients, slices and noise) "
                              f"split into K = {k} view subsets (views k mod {k}).",
                              size_px=256, num_views=1152, detector_binning=2,
                              num_validation_patients=1, slices_per_patient=8, num_splits=k,
                              photons_per_ray=CALIBRATED_PHOTONS["quick"])
       for k in (3, 4)},
    "paper": _preset("paper", "The paper's size: 512 px, 2304 views, 736 channels, 8+2 virtual "
                     "(+2 validation) patients x 50 slices.", size_px=512, num_views=2304),
    "dicom": _preset("dicom", "Your DICOM series (--manual_dir: one folder per patient), "
                     "resampled to 512 px at 0.742 mm, 2304 views; 50 random slices each; 7 "
                     "train, 2 test, 1 validation patients (the Grand Challenge's 10).",
                     source="dicom", size_px=512, num_views=2304, num_train_patients=7,
                     num_validation_patients=1,
                     photons_per_ray=CALIBRATED_PHOTONS["paper"]),
    "numpy": _preset("numpy", "Your .npy/.npz stacks in HU (--manual_dir: one file per "
                     "patient), resampled to 512 px, 2304 views; 50 random slices each; 7 train, "
                     "2 test, 1 validation patients.",
                     source="numpy", size_px=512, num_views=2304, num_train_patients=7,
                     num_validation_patients=1,
                     photons_per_ray=CALIBRATED_PHOTONS["paper"]),
    "projections": _preset("projections", "Raw DICOM-CT-PD projections (--manual_dir: one folder "
                           "per patient with its full- and quarter-dose series, e.g. TCIA's "
                           "LDCT-and-Projection-data), rebinned and reconstructed at 512 px, "
                           "0.742 mm; 50 random slices per patient on a 1 mm grid; 7 train, 2 "
                           "test, 1 validation patients.", source="projections", size_px=512,
                           num_train_patients=7, num_validation_patients=1),
    "projections_quick": _preset("projections_quick", "The built-in projection fixture "
                                 "(python -m data_prep.ctpd --phantom=abdomen, one folder per "
                                 "virtual patient): 128 px at 3 mm, 8 random slices per patient, "
                                 "patients in folder order (8 train, 2 test, 1 validation).",
                                 source="projections", size_px=128, pixel_size_mm=3.0,
                                 num_validation_patients=1, slices_per_patient=8,
                                 shuffle_patients=False),
    "projections_tiny": _preset("projections_tiny", "Tests: the tiny projection fixture, 64 px "
                                "at 6 mm, 2+1(+1 validation) patients x 2 slices.",
                                source="projections", size_px=64, pixel_size_mm=6.0,
                                num_train_patients=2, num_test_patients=1,
                                num_validation_patients=1, slices_per_patient=2,
                                shuffle_patients=False),
}


# ------------------------------------------------------------------------------------------
# Sources: the list of patients, the slices drawn from each, and their HU images on the grid.


PatientSource = splits.PatientSource


def list_patients(config: CtConfig, manual_dir: Path | None) -> list[PatientSource]:
    """Patients of every split, deterministic in ``config.seed``."""
    config.validate()
    n_train, n_test = config.num_train_patients, config.num_test_patients
    n_all = splits.num_patients(config)
    splits.check_patient_counts(n_train, n_test, config.num_validation_patients)

    def split_of(i: int) -> str:
        return splits.split_of(i, n_train, n_test, config.num_validation_patients)
    if config.source == "phantom":
        total = abdomen.ABDOMEN_LENGTH_MM / abdomen.SLICE_SPACING_MM
        rng = np.random.default_rng([config.seed, 7])
        out = []
        for i in range(n_all):
            if config.slices_per_patient > total:
                raise ConfigError(f"slices_per_patient={config.slices_per_patient} exceeds the "
                                  f"{int(total)} slices of a virtual patient.")
            slices = np.sort(rng.choice(int(total), config.slices_per_patient, replace=False))
            seed = 1000 * config.seed + i
            out.append(PatientSource(f"virtual-{seed:04d}", i, split_of(i),
                                     tuple(int(s) for s in slices), str(seed)))
        return out
    if manual_dir is None or not Path(manual_dir).is_dir():
        raise MissingInputError(
            f"The {config.source!r} config reads your data from --manual_dir, which is "
            f"{manual_dir!r}. Point it at a folder with " +
            {"dicom": "one sub-folder of DICOM files per patient.",
             "numpy": "one .npy/.npz file (HU) per patient.",
             "projections": "one sub-folder per patient holding its full- and quarter-dose "
                            "DICOM-CT-PD projection series."}[config.source])
    root = Path(manual_dir)
    if config.source == "projections":
        return _projection_patients(config, root, split_of, n_all)
    if config.source == "dicom":
        entries = sorted(p for p in root.iterdir() if p.is_dir())
    elif config.source == "numpy":
        entries = sorted(p for p in root.iterdir() if p.suffix in (".npy", ".npz"))
    else:
        raise ConfigError(f"CtConfig.source must be phantom, dicom or numpy, got "
                          f"{config.source!r}.")
    if len(entries) < n_all:
        raise InputError(f"{root} holds {len(entries)} patients; the config needs "
                         f"{n_train} + {n_test} + {config.num_validation_patients} + "
                         f"{config.extra_train_patients} (train, test, validation, extra train). "
                         "Lower num_train_patients/num_test_patients/num_validation_patients/"
                         "extra_train_patients.")
    order = np.random.default_rng([config.seed, 11]).permutation(len(entries))
    chosen = [entries[i] for i in order[:n_all]]
    out = []
    for i, path in enumerate(chosen):
        volume = _read_volume(config, path)
        slices = ct_io.sample_slices(volume, config.slices_per_patient, config.seed)
        out.append(PatientSource(volume.patient_id, i, split_of(i),
                                 tuple(int(s) for s in slices), str(path)))
    return out


def _matches(relative: str, patterns: str) -> bool:
    return any(fnmatch.fnmatch(relative.lower(), p.strip().lower())
               for p in patterns.split("|") if p.strip())


def find_series(config: CtConfig, patient: Path) -> tuple[Path, Path]:
    """(full-dose, quarter-dose) series folders below ``patient``: the folders holding files
    whose path relative to ``patient`` matches ``full_dose_glob`` / ``quarter_dose_glob``; of
    several matches, those holding DICOM-CT-PD projections (not reconstructed images). Raises
    InputError (exit status 3) unless each comes down to exactly one folder."""
    folders = sorted(p for p in patient.rglob("*") if p.is_dir() and not p.name.startswith(".")
                     and any(f.is_file() for f in p.iterdir()))
    found = {}
    for what, field in (("full-dose", "full_dose_glob"), ("quarter-dose", "quarter_dose_glob")):
        patterns = getattr(config, field)
        hits = [p for p in folders if _matches(p.relative_to(patient).as_posix(), patterns)]
        if len(hits) > 1:  # e.g. full_DICOM-CT-PD beside full_1mm images: keep projections
            hits = [p for p in hits if ctpd.is_projection_series(p)] or hits
        shown = ", ".join(p.relative_to(patient).as_posix() for p in folders[:8]) or "none"
        if not hits:
            raise InputError(
                f"{patient}: no {what} projection series: no folder below it matches "
                f"--config.{field}={patterns!r} (folders with files: {shown}). Each patient "
                "folder needs its full- and quarter-dose DICOM-CT-PD series (e.g. "
                "full_DICOM-CT-PD/ and quarter_DICOM-CT-PD/); add the missing one, move this "
                f"patient out of --manual_dir, or change --config.{field}.")
        if len(hits) > 1:
            raise InputError(
                f"{patient}: {len(hits)} folders match --config.{field}={patterns!r} ("
                + ", ".join(p.relative_to(patient).as_posix() for p in hits[:5]) + "); a "
                f"patient has one {what} series. Narrow the pattern.")
        found[what] = hits[0]
    if found["full-dose"] == found["quarter-dose"]:
        raise InputError(f"{patient}: the same folder {found['full-dose']} matches both "
                         "full_dose_glob and quarter_dose_glob; make the patterns distinct.")
    return found["full-dose"], found["quarter-dose"]


@functools.lru_cache(maxsize=16)
def _indexed(full: str, quarter: str):
    """Both series' headers, indexed once per process (the slice choice and the build share
    them), checked to be the same scan."""
    full_index, quarter_index = ctpd.index_series(full), ctpd.index_series(quarter)
    ctpd.check_pair(full_index, quarter_index)
    return full_index, quarter_index


def positions_on_grid(config: CtConfig) -> list[int]:
    """The grid indices k of ``slice_positions_mm`` (position = k * slice_spacing_mm); raises
    ConfigError for text that is not numbers, or a position off the grid."""
    text = config.slice_positions_mm.strip()
    if not text:
        return []
    try:
        positions = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--config.slice_positions_mm={text!r}: give table positions in mm "
                          "separated by commas, e.g. '110,125.5'.") from None
    out = []
    for z in positions:
        k = round(z / config.slice_spacing_mm)
        if not math.isfinite(z) or abs(k * config.slice_spacing_mm - z) > 1e-6:
            raise ConfigError(f"--config.slice_positions_mm: {z} mm is not a multiple of "
                              f"--config.slice_spacing_mm={config.slice_spacing_mm}; slices lie "
                              "at k * spacing. Change the spacing or the position.")
        out.append(int(k))
    return sorted(set(out))


def _projection_patients(config: CtConfig, root: Path, split_of, n_all: int
                         ) -> list[PatientSource]:
    from consensus_jax.ct import projection_input

    entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(entries) < n_all:
        raise InputError(f"{root} holds {len(entries)} patient folders; the config needs "
                         f"{n_all} ({config.num_train_patients} train, {config.num_test_patients}"
                         f" test, {config.num_validation_patients} validation, "
                         f"{config.extra_train_patients} extra train). Lower those counts.")
    if config.shuffle_patients:
        order = np.random.default_rng([config.seed, 11]).permutation(len(entries))
        entries = [entries[i] for i in order]
    fixed = positions_on_grid(config)
    out = []
    for i, patient in enumerate(entries[:n_all]):
        full, quarter = find_series(config, patient)
        _, index = _indexed(str(full), str(quarter))
        grid = projection_input.slice_grid(index.scan, config.slice_spacing_mm)
        if fixed:
            projection_input.check_positions(
                index.scan, [k * config.slice_spacing_mm for k in fixed], str(quarter))
            slices = np.asarray(fixed)
        else:
            if config.slices_per_patient > grid.size:
                raise InputError(
                    f"{quarter}: the scan covers {grid.size} slice positions at "
                    f"{config.slice_spacing_mm} mm spacing, fewer than slices_per_patient="
                    f"{config.slices_per_patient}. Lower --config.slices_per_patient or "
                    "--config.slice_spacing_mm.")
            rng = np.random.default_rng([config.seed, zlib.crc32(patient.name.encode())])
            slices = np.sort(rng.choice(grid, config.slices_per_patient, replace=False))
        out.append(PatientSource(patient.name, i, split_of(i), tuple(int(k) for k in slices),
                                 str(patient)))
    return out


def _projection_examples(config: CtConfig, source: PatientSource
                         ) -> Iterator[tuple[int, dict]]:
    from tqdm.auto import tqdm

    from consensus_jax.ct import projection_input

    full, quarter = _indexed(*(str(p) for p in find_series(config, Path(source.location))))
    grid = ct_geometry.ImageGrid(config.size_px, config.grid_pixel_size_mm)
    z_mm = [k * config.slice_spacing_mm for k in source.slice_indices]
    images = projection_input.reconstruct_slices(quarter, z_mm, grid, full, ffs=config.ffs)
    for index, hu in zip(tqdm(source.slice_indices, desc=f"slices ({source.patient})",
                              unit="slice", leave=False), images, strict=True):
        hu = {**hu, "x_clean": hu["x_full"], "x_true": hu["x_full"]}  # no noiseless image
        yield index, {k: (hu[k] / 1000.0).astype(np.float32)[..., None]
                      for k in features.CT_IMAGE_KEYS}


def _read_volume(config: CtConfig, path: Path) -> ct_io.Volume:
    """The patient's volume; a NumPy stack without a pixel size takes the config's
    ``numpy_pixel_size_mm``, and without either is refused here, before any slice is
    simulated."""
    if config.source == "dicom":
        return ct_io.read_dicom_series(path)
    volume = ct_io.read_numpy_stack(path)
    if volume.pixel_size_mm is not None:
        return volume
    if config.numpy_pixel_size_mm is None:
        raise InputError(
            f"{path}: the stack does not say its pixel size, which the resampling to the "
            f"{config.size_px} px grid needs. Give it on the command line, e.g. "
            "--config.numpy_pixel_size_mm=0.7 --config.name=<new name> (mm per pixel, for every "
            "stack that stores none), or store it in the file: numpy.savez(path.npz, hu=images, "
            "pixel_size_mm=0.7).")
    return dataclasses.replace(volume, pixel_size_mm=float(config.numpy_pixel_size_mm))


def load_slices(config: CtConfig, source: PatientSource) -> np.ndarray:
    """[S, H, W] HU images of the patient's chosen slices on the reconstruction grid."""
    grid_mm = config.grid_pixel_size_mm
    if config.source == "phantom":
        seed = int(source.location)
        return np.asarray(abdomen.virtual_patient(seed, max(source.slice_indices) + 1,
                                                  config.size_px, grid_mm,
                                                  slice_indices=source.slice_indices))
    volume = _read_volume(config, Path(source.location))
    hu = volume.hu[list(source.slice_indices)]
    return ct_io.resample_to_grid(hu, volume.pixel_size_mm, config.size_px, grid_mm)


def patient_examples(config: CtConfig, source: PatientSource) -> Iterator[tuple[int, dict]]:
    """(slice index, image features) of each chosen slice of one patient."""
    from consensus_jax.ct import simulate

    if config.source == "projections":
        yield from _projection_examples(config, source)
        return
    geometry = config.scan_geometry()
    hu = load_slices(config, source)
    for hu_slice, index in zip(hu, source.slice_indices, strict=True):
        images = simulate.simulate_slice(
            hu_slice, geometry, config.photons_per_ray,
            slice_key(config, source.patient_id, index), config.dose_fraction,
            split=config.split, electronic_noise_counts=config.electronic_noise_counts,
            num_splits=config.num_splits)
        yield index, {k: np.asarray(images[k], np.float32)[..., None]
                      for k in features.image_keys("ct", config.num_splits)}


class Builder(splits.PatientSplitBuilder):
    """Split quarter-dose CT pairs for consensus training (Wu et al. 2019, Section 3.1)."""

    BUILDER_CONFIGS = list(PRESETS.values())
    MANUAL_SOURCES = frozenset({"dicom", "numpy", "projections"})
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Only for the dicom/numpy/projections configs: put one sub-folder of CT DICOM files "
        "(dicom), one .npy/.npz HU stack (numpy) or one folder with the full- and quarter-dose "
        "DICOM-CT-PD projection series (projections) per patient into --manual_dir.")

    list_patients = staticmethod(list_patients)
    patient_examples = staticmethod(patient_examples)

    def features(self, config):
        return features.ct_features(config.size_px, config.num_splits)
