"""Prepares the CT dataset (TFDS ``ct_consensus``) and its test-time baselines.

  python -m data_prep.ct --config=quick                      # built-in virtual patients
  python -m data_prep.ct --config=dicom --manual_dir=/data/LDCT_full_dose
  python -m data_prep.ct --config=quick --config.photons_per_ray=1e4 --config.name=quick_i0_1e4
  python -m data_prep.ct --config=quick --calibrate          # photons per ray vs FBP noise
  python -m data_prep.ct --config=projections --manual_dir=/data/LDCT-and-Projection-data

``--config=quick`` is short for ``--config=configs/data/ct.py:quick`` (the presets: tiny, quick,
quick_k3, quick_k4, paper, dicom, numpy); ``--config.<field>=<value>`` changes a field of it,
under a new ``--config.name``. Rerunning a finished command reuses its output. TFDS writes into a
temporary folder and renames it when complete, so an interrupted build never loads as complete;
rerun to rebuild it. After the build this also writes, into the dataset folder:
split_diagnostic.json (Theorem 1's conditions, measured against the noiseless FBP) and
baselines_test.npz (TV reconstructions of the test slices, lambda chosen on a training slice),
unless --nobaselines.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from absl import flags

from consensus_jax.errors import ConfigError
from data_prep import cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


#: Measured projections: the halves' noise correlation against the full-dose FBP when the halves'
#: own noises are independent. The quarter dose is the full dose plus independent noise (noise
#: insertion, or binomial thinning, to first order), so with f the full-dose FBP noise
#: (variance s^2), a half's noise has variance 8 s^2 (half the views at a quarter of the dose)
#: and covariance 2 * s^2 / 2 = s^2 with f; then n_i = q_i - f has variance 8 - 2 + 1 = 7 s^2
#: and cov(n1, n2) = 0 - s^2 - s^2 + s^2 = -s^2: a correlation of -1/7.
EXPECTED_CORRELATION_VS_FULL_DOSE = -1.0 / 7.0


def split_report(builder) -> dict:
    """Theorem 1's conditions on the test split: n1 = x1 - x_clean, n2 = x2 - x_clean.

    For measured projections (no noiseless image; x_clean is the full-dose FBP) the noises are
    measured against the full-dose FBP, whose own noise makes their correlation about -1/7 when
    the halves' noises are independent (``EXPECTED_CORRELATION_VS_FULL_DOSE``); the full- vs
    low-dose comparison is left out (it would compare x_full with itself)."""
    import numpy as np
    import tensorflow_datasets as tfds

    from consensus_jax.ct.split import split_noise_diagnostic
    from consensus_jax.metrics import rmse

    cols = {"x1": [], "x2": [], "x_est": [], "x_full": [], "x_clean": []}
    for ex in tfds.as_numpy(builder.as_dataset(split="test")):
        for k in cols:
            cols[k].append(ex[k][..., 0])
    img = {k: 1000.0 * np.stack(v) for k, v in cols.items()}  # HU
    halves = split_noise_diagnostic(img["x1"], img["x2"], img["x_clean"])
    if builder.builder_config.source == "projections":
        return {
            "reference": "x_full (FBP of the full-dose projections: measured data have no "
                         "noiseless image), HU",
            "halves": dataclasses.asdict(halves),
            "expected_correlation_if_independent": EXPECTED_CORRELATION_VS_FULL_DOSE,
            "half_difference_std_hu": float(np.std(img["x1"] - img["x2"])),
            "low_dose_fbp_rmse_vs_full_dose_hu": float(np.mean(rmse(img["x_est"],
                                                                    img["x_full"]))),
            "num_test_slices": int(img["x1"].shape[0]),
        }
    doses = split_noise_diagnostic(img["x_full"], img["x_est"], img["x_clean"])
    return {
        "reference": "x_clean (FBP of the noiseless projections), HU",
        "halves": dataclasses.asdict(halves),
        "full_vs_low_dose": dataclasses.asdict(doses),
        "low_dose_fbp_rmse_vs_full_dose_hu": float(np.mean(rmse(img["x_est"], img["x_full"]))),
        "num_test_slices": int(img["x1"].shape[0]),
    }


def _describe(report: dict) -> str:
    h = report["halves"]
    if "full_vs_low_dose" not in report:  # measured projections
        return (f"Split diagnostic (test split, vs full-dose FBP, HU): mean n1 "
                f"{h['mean_n1']:.2f}, mean n2 {h['mean_n2']:.2f}, std {h['std_n1']:.1f}/"
                f"{h['std_n2']:.1f}, corr(n1, n2) {h['correlation']:.4f} (independent halves "
                f"give {report['expected_correlation_if_independent']:.3f} against a noisy "
                f"reference); low-dose FBP RMSE vs full-dose "
                f"{report['low_dose_fbp_rmse_vs_full_dose_hu']:.1f} HU.")
    d = report["full_vs_low_dose"]
    return (f"Split diagnostic (test split, vs noiseless FBP, HU): mean n1 {h['mean_n1']:.2f}, "
            f"mean n2 {h['mean_n2']:.2f}, std {h['std_n1']:.1f}/{h['std_n2']:.1f}, "
            f"corr(n1, n2) {h['correlation']:.4f}; corr(full-, low-dose noise) "
            f"{d['correlation']:.3f}; low-dose FBP RMSE vs full-dose "
            f"{report['low_dose_fbp_rmse_vs_full_dose_hu']:.1f} HU.")


def tv_baselines(builder, manual_dir: Path | None, num_iterations: int) -> Path:
    """TV reconstructions of every test slice from its quarter-dose sinogram (re-simulated with
    the slice's own key, so it is the very scan behind x1/x2/x_est), into baselines_test.npz."""
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from consensus_jax.ct import simulate, tv
    from consensus_jax.ct.dose import MU_WATER_PER_MM
    from consensus_jax.ct.fbp import fbp
    from consensus_jax.workdir import atomic_open
    from data_prep.ct_consensus.ct_consensus_dataset_builder import (
        list_patients,
        load_slices,
        slice_key,
    )

    path = Path(builder.data_dir) / "baselines_test.npz"
    if path.exists():
        print(f"Reusing {path}.")
        return path
    config = builder.builder_config
    geometry = config.scan_geometry()
    patients = list_patients(config, manual_dir)

    def sinograms(source, images, indices):
        out = []
        for hu, index in zip(images, indices, strict=True):
            key_noise, _ = jax.random.split(slice_key(config, source.patient_id, index))
            out.append(simulate.simulate_sinograms(
                hu, geometry, config.photons_per_ray, key_noise, config.dose_fraction,
                config.electronic_noise_counts))
        return out

    # lambda: the documented rule of consensus_jax.ct.tv on the middle slice of the first
    # training patient, never on test data; warm-started from the FBP like the test runs.
    val = next(p for p in patients if p.split == "train")
    hu_val = load_slices(config, val)
    mid = len(val.slice_indices) // 2
    sino_val = sinograms(val, hu_val[mid:mid + 1], val.slice_indices[mid:mid + 1])[0]
    x_full_val = fbp(sino_val["p_full"], geometry)
    norm = tv.projector_norm(geometry, filtered=True)
    lam, lambdas, errors = tv.select_tv_lambda(sino_val["p_low"], x_full_val, geometry,
                                               num_iterations,
                                               x0=fbp(sino_val["p_low"], geometry),
                                               operator_norm=norm)
    print(f"TV lambda = {lam:.4g} mm (sweep RMSE in HU: "
          + ", ".join(f"{a:.3g}: {1000 * e / MU_WATER_PER_MM:.1f}" for a, e in
                      zip(lambdas, errors, strict=True)) + ")")
    if lam in (lambdas[0], lambdas[-1]):
        print("Warning: the best TV lambda is at an end of the extended sweep: this scan's dose "
              "or geometry is far from those consensus_jax.ct.tv.default_lambda_centre was "
              "measured on, and the TV baseline may be under- or over-regularised.")
    recon, pids, sids = [], [], []
    test = [p for p in patients if p.split == "test"]
    for source in tqdm(test, desc="TV (test patients)", unit="patient"):
        images = load_slices(config, source)
        for s, index in zip(sinograms(source, images, source.slice_indices), source.slice_indices,
                            strict=True):
            x0 = fbp(s["p_low"], geometry)[None]
            mu, _ = tv.tv_reconstruct(s["p_low"][None], geometry, lam, num_iterations, x0=x0,
                                      operator_norm=norm)
            recon.append(np.asarray(mu[0]) / MU_WATER_PER_MM - 1.0)  # HU / 1000
            pids.append(source.patient_id)
            sids.append(index)
    with atomic_open(path, "wb") as f:
        np.savez(f, TV=np.stack(recon)[..., None].astype(np.float32),
                 patient_id=np.asarray(pids), slice_index=np.asarray(sids),
                 meta_tv_lambda_mm=lam, meta_tv_iterations=num_iterations,
                 meta_tv_lambda_grid=lambdas, meta_tv_lambda_rmse=errors)
    return path


PAPER_FBP_RMSE_HU = 27.6
"""The paper's quarter-dose FBP row (Table 1): RMSE against the full-dose FBP, HU."""


def _interpolate_photons(photons, rmse, target: float) -> float:
    """I0 giving ``target`` RMSE: log-log linear between the two sweep points that bracket it
    (photon starvation makes the curve steeper than I0^-1/2 at low I0); outside the sweep,
    extrapolated from the nearest point with the ideal variance ~ 1/I0 law."""
    import numpy as np

    order = np.argsort(photons)
    photons, rmse = photons[order], rmse[order]
    for i in range(len(photons) - 1):
        if rmse[i] >= target >= rmse[i + 1]:
            slope = np.log(rmse[i + 1] / rmse[i]) / np.log(photons[i + 1] / photons[i])
            return float(photons[i] * np.exp(np.log(target / rmse[i]) / slope))
    nearest = int(np.argmin(np.abs(np.log(rmse / target))))
    return float(photons[nearest] * (rmse[nearest] / target) ** 2)


def calibrate(config, photons: list[float], slices_per_patient: int | None = None) -> dict:
    """Quarter-dose FBP RMSE against full-dose FBP (whole image, HU) for each full-dose I0, on
    every virtual patient of the preset (train and test), and the I0 that gives the paper's
    27.6 HU. Prints a table and returns the figures."""
    import numpy as np
    from tqdm import tqdm

    from consensus_jax.ct import simulate
    from data_prep.ct_consensus.ct_consensus_dataset_builder import (
        list_patients,
        load_slices,
        slice_key,
    )

    if config.source != "phantom":
        raise ConfigError("--calibrate uses the built-in virtual patients (source=phantom).")
    geometry = config.scan_geometry()
    mask = np.ones(geometry.image.shape, bool)
    # Training and test patients only, so that the figures of presets made before the
    # validation patients existed stay reproducible.
    patients = [p for p in list_patients(config, None) if p.split in ("train", "test")]
    squared = {"train": [], "test": []}
    for patient in tqdm(patients, desc="calibration", unit="patient"):
        hu = load_slices(config, patient)
        indices = patient.slice_indices
        if slices_per_patient is not None:
            hu, indices = hu[:slices_per_patient], indices[:slices_per_patient]
        for image, index in zip(hu, indices, strict=True):
            key = slice_key(config, patient.patient_id, index)
            squared[patient.split].append(simulate.low_dose_noise_sweep(
                image, geometry, photons, key, config.dose_fraction,
                config.electronic_noise_counts, mask)[:, 0])
    rmse = {split: np.sqrt(np.mean(np.stack(v, axis=1), axis=1)) for split, v in squared.items()}
    rmse["all"] = np.sqrt(np.mean(np.stack(squared["train"] + squared["test"], axis=1), axis=1))
    suggested = _interpolate_photons(np.asarray(photons, np.float64), rmse["all"],
                                     PAPER_FBP_RMSE_HU)
    print(f"Calibration on {len(squared['train'])} training and {len(squared['test'])} test "
          f"slices of {len(patients)} virtual patients, {config.size_px} px, {config.geometry} "
          f"beam, {config.num_views} views, dose fraction {config.dose_fraction} (paper's FBP row: "
          f"{PAPER_FBP_RMSE_HU} HU):")
    print("| photons per ray (full dose) | low-dose FBP RMSE vs full-dose FBP, all slices (HU) "
          "| train slices | test slices |")
    print("|---|---|---|---|")
    for i, i0 in enumerate(photons):
        print(f"| {i0:.3g} | {rmse['all'][i]:.1f} | {rmse['train'][i]:.1f} | "
              f"{rmse['test'][i]:.1f} |")
    print(f"I0 for {PAPER_FBP_RMSE_HU} HU over all slices: {suggested:.3g} photons per ray "
          f"(preset now: {config.photons_per_ray:.3g}).")
    return {"photons": list(photons), "rmse_hu": {k: v.tolist() for k, v in rmse.items()},
            "suggested_photons": float(suggested)}


def _define_flags(flag_values: flags.FlagValues) -> None:
    fv = {"flag_values": flag_values}
    flags.DEFINE_bool("baselines", True, "Compute the TV baseline of the test split.", **fv)
    flags.DEFINE_integer("tv_iterations", 30, "Ramp-preconditioned TV iterations per slice, from "
                         "the FBP (30: within ~0.3-0.6 HU of convergence on the quick preset).",
                         **fv)
    cli.define_calibration_flags(flag_values, "photons",
                                 ["1e4", "2e4", "3e4", "5e4", "1e5", "2e5"],
                                 "quarter-dose FBP noise vs full-dose photons per ray",
                                 "1e4,2e4,5e4")


def _tv_baselines(builder, manual_dir: Path | None, flag_values: flags.FlagValues) -> None:
    if flag_values.baselines and builder.builder_config.source == "projections":
        print("No TV baseline for measured projections (it re-simulates each test slice's "
              "sinogram); the table has FBP and the learned methods.")
        return
    if flag_values.baselines:
        print(f"TV baselines: {tv_baselines(builder, manual_dir, flag_values.tv_iterations)}")


CT = cli.Modality(
    name="ct", builder_module="data_prep.ct_consensus.ct_consensus_dataset_builder",
    split_report=split_report, describe=_describe, define_flags=_define_flags, check_sources=True,
    before_build=cli.calibrate_before_build(calibrate, "photons"), after_build=_tv_baselines)


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.ct`` in this process (argv: the arguments after the program name)."""
    return cli.main(CT, argv)


if __name__ == "__main__":
    cli.start(CT)
