"""Evaluation on whole test slices: every method, the paper's metrics, Tables 1-2 and Figs. 1-2.

Columns follow the paper's tables: CT — FBP, TV, Noise2noise, Proposed, Noise2clean; MRI —
Zero-filling, SENSE, Noise2noise, Proposed, Noise2clean; plus "Noise2noise (both halves)", the
Noise2noise network applied to both halves and averaged. Rows give mean +- std over test slices.
CT is scored against the full-dose FBP (the paper's protocol), against the FBP of noiseless
projections (the clean image at the reconstruction's own resolution) and, secondary, against the
source image (the Hann filter's blur alone sets an RMSE floor there). For each method with a
spread of networks (the consensus pair) the spread's rank correlation with the error per 16 x 16
px patch is reported under the table (``spread_error_correlations``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from consensus_jax import input_pipeline, methods, metrics, uncertainty
from consensus_jax import outputs as output_paths
from consensus_jax import workdir as wd
from consensus_jax.errors import ConfigError, InputError, RunError
from consensus_jax.runs import (  # noqa: F401 - part of evaluation's interface
    load_params,
    load_run,
    predict,
    predict_spread,
    resolve_checkpoint,
)

#: Column order of the paper's tables, by modality (baselines first, then the learned methods).
METHOD_ORDER = {
    "ct": ("FBP", "TV", "Noise2noise", "Noise2noise (both halves)", "Proposed",
           "Proposed (distilled)", "Noise2clean"),
    "mri": ("Zero-filling", "SENSE", "Noise2noise", "Noise2noise (both halves)", "Proposed",
            "Proposed (distilled)", "Noise2clean"),
}
#: Non-learned baselines: the dataset feature holding each.
BASELINE_FEATURE = {"FBP": "x_est", "Zero-filling": "x_zf", "SENSE": "x_est"}
#: References to score against: (feature, row label), the paper's first.
REFERENCES = {
    "ct": (("x_full", "full-dose FBP"), ("x_clean", "noiseless FBP"), ("x_true", "source image")),
    "mri": (("x_ref", "fully sampled"), ("x_clean", "noiseless")),
}


@dataclass(frozen=True)
class Result:
    """Per-slice metrics of one method against one reference."""

    method: str
    reference: str
    values: dict[str, np.ndarray]  # metric name -> [S]


def score(modality: str, outputs: Mapping[str, np.ndarray], images: Mapping[str, np.ndarray],
          batch_size: int = 16) -> list[Result]:
    """Metrics of every output against every available reference; a reference identical to an
    earlier one (measured data, which have no noiseless image, store the full-dose image there
    too) is scored once, under the earlier one's name."""
    results = []
    scored: list[np.ndarray] = []
    for feature, label in REFERENCES[modality]:
        if feature not in images:
            continue
        ref = images[feature]
        if any(np.array_equal(ref, earlier) for earlier in scored):
            continue
        scored.append(ref)
        for name, out in outputs.items():
            per: dict[str, list[np.ndarray]] = {}
            for start in range(0, ref.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                m = metrics.image_metrics(modality, out[sl], ref[sl])
                for k, v in m.items():
                    per.setdefault(k, []).append(np.asarray(v))
            results.append(Result(name, label, {k: np.concatenate(v) for k, v in per.items()}))
    return results


def _fmt(v: np.ndarray) -> str:
    return f"{np.mean(v):.1f} ± {np.std(v):.1f}"


METRIC_LABELS = {"rmse_hu": "RMSE (HU)", "ssim": "SSIM", "rmse_1e3": "RMSE (10^-3)"}


def markdown_table(modality: str, results: Sequence[Result]) -> str:
    """The paper's table layout: methods as columns, one row per metric and reference."""
    methods = [m for m in METHOD_ORDER[modality] if any(r.method == m for r in results)]
    methods += sorted({r.method for r in results} - set(methods))
    refs = [label for _, label in REFERENCES[modality]
            if any(r.reference == label for r in results)]
    metric_names = list(results[0].values)
    lines = ["| Index | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for ref in refs:
        for name in metric_names:
            cells = []
            for m in methods:
                hit = [r for r in results if r.method == m and r.reference == ref]
                cells.append(_fmt(hit[0].values[name]) if hit else "—")
            label = f"{METRIC_LABELS.get(name, name)} vs {ref}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: A patch lies inside the imaged object when the reference's patch mean exceeds this: CT the
#: mean HU (stored / 1000; air is -1000 HU, soft tissue about 0), MRI the mean magnitude as a
#: fraction of the slice's largest patch mean. Outside it (air, background) a pair can disagree
#: without error (docs/RESULTS.md), so the ranking inside is reported apart.
OBJECT_THRESHOLD = {"ct": -0.5, "mri": 0.1}


def object_patches(modality: str, reference: np.ndarray, patch_px: int = uncertainty.PATCH_PX
                   ) -> np.ndarray:
    """bool [S, rows, cols]: the patches of ``reference`` [S, H, W, C] inside the object
    (``OBJECT_THRESHOLD``)."""
    if modality == "ct":
        return np.asarray(uncertainty.patch_mean(reference, patch_px)) > OBJECT_THRESHOLD["ct"]
    level = np.asarray(uncertainty.patch_mean_spread(reference, patch_px))  # mean magnitude
    return level > OBJECT_THRESHOLD["mri"] * level.max(axis=(1, 2), keepdims=True)


def spread_error_correlations(modality: str, spreads: Mapping[str, np.ndarray],
                              outputs: Mapping[str, np.ndarray],
                              images: Mapping[str, np.ndarray],
                              patch_px: int = uncertainty.PATCH_PX, batch_size: int = 16
                              ) -> list[dict[str, Any]]:
    """How well each method's network spread ranks its error: per 16 x 16 px patch, the mean
    spread against the RMS error of the method's output against each available reference,
    Spearman's rank correlation over each slice's patches (mean and std over slices), over
    all patches of the split (pooled) and over those inside the object (``object_patches``).

    Args:
      spreads: {column: per-pixel spread [S, H, W, C]} of the methods that have one.
      outputs: {column: denoised slices [S, H, W, C]}.
    Returns:
      One record per (column, reference): ``method``, ``reference``, ``patch_px`` and the
      fields of ``uncertainty.spread_error_correlation``.
    """
    mean_spread = jax.jit(uncertainty.patch_mean_spread, static_argnums=1)
    rms_error = jax.jit(uncertainty.patch_rms_error, static_argnums=2)

    def per_patch(fn: Callable[..., Any], *arrays: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(fn(*[a[i:i + batch_size] for a in arrays], patch_px))
                               for i in range(0, arrays[0].shape[0], batch_size)])

    records = []
    for name, spread in spreads.items():
        patch_spread = per_patch(mean_spread, spread)
        for feature, label in REFERENCES[modality]:
            if feature not in images:
                continue
            patch_error = per_patch(rms_error, outputs[name], images[feature])
            inside = object_patches(modality, images[feature], patch_px)
            records.append({"method": name, "reference": label, "patch_px": patch_px,
                            **uncertainty.spread_error_correlation(patch_spread, patch_error,
                                                                   inside)})
    return records


def spread_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The markdown printed under the table for ``spread_error_correlations``; "" if none."""
    if not records:
        return ""
    patch = records[0]["patch_px"]
    lines = [f"Network spread as an uncertainty map: Spearman's rank correlation between the "
             f"mean spread and the RMS error of each {patch} x {patch} px patch (mean ± std over "
             "slices; pooled over all patches of the split, and over those inside the object).",
             "",
             "| Method | Reference | rho per slice | rho pooled | patches | rho inside the object "
             "| patches inside |", "|---" * 7 + "|"]
    lines += [f"| {r['method']} | {r['reference']} | {r['mean']:.2f} ± {r['std']:.2f} | "
              f"{r['pooled']:.2f} | {r['num_patches']} | {r['object_pooled']:.2f} | "
              f"{r['object_patches']} |" for r in records]
    return "\n".join(lines)


def write_outputs(out_dir: Path, modality: str, results: Sequence[Result], header: str,
                  extra: Mapping[str, Any] | None = None,
                  figure: Callable[[Path], Any] | None = None,
                  spread: Sequence[Mapping[str, Any]] = ()) -> dict[str, Path]:
    """Writes table.md, table.csv, results.json (per-slice values) and, when ``figure`` is
    given, figure.png (``figure(path)`` draws it) into ``out_dir`` as one set. ``spread``
    (``spread_error_correlations``) goes under the table in table.md, into table.csv as the
    metrics ``spread_error_spearman`` (over slices), ``spread_error_spearman_pooled`` and
    ``spread_error_spearman_object`` (no std) and into results.json as ``uncertainty``.

    Every file is first written into a temporary folder inside ``out_dir``; only when all of
    them exist do they replace the old set, whose files are kept under numbered names (never
    overwritten). A failure on the way removes the temporary folder and leaves ``out_dir`` as
    it was.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(modality, results)
    rows = [{"method": r.method, "reference": r.reference, "metric": k, "mean": float(np.mean(v)),
             "std": float(np.std(v)), "num_slices": int(v.size)}
            for r in results for k, v in r.values.items()]
    csv_rows = rows + [row for r in spread for row in (
        {"method": r["method"], "reference": r["reference"], "metric": "spread_error_spearman",
         "mean": r["mean"], "std": r["std"], "num_slices": r["num_slices"]},
        {"method": r["method"], "reference": r["reference"],
         "metric": "spread_error_spearman_pooled", "mean": r["pooled"], "std": None,
         "num_slices": len(r["per_slice"])},
        {"method": r["method"], "reference": r["reference"],
         "metric": "spread_error_spearman_object", "mean": r["object_pooled"], "std": None,
         "num_slices": len(r["per_slice"])})]
    payload = {"modality": modality, "summary": rows, **(extra or {}),
               **({"uncertainty": list(spread)} if spread else {}),
               "per_slice": [{"method": r.method, "reference": r.reference,
                              **{k: v.tolist() for k, v in r.values.items()}} for r in results]}
    names = {"md": "table.md", "csv": "table.csv", "json": "results.json"}
    if figure is not None:
        names["figure"] = "figure.png"
    tmp = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=out_dir))
    try:
        below = f"\n{spread_table(spread)}\n" if spread else ""
        (tmp / names["md"]).write_text(f"{header}\n\n{table}\n{below}")
        with (tmp / names["csv"]).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(csv_rows)
        (tmp / names["json"]).write_text(json.dumps(payload, indent=1))
        if figure is not None:
            figure(tmp / names["figure"])
        missing = [n for n in names.values() if not (tmp / n).is_file()]
        if missing:
            raise RuntimeError(f"{tmp}: {missing} were not written.")
        for name in names.values():  # the whole set exists: it replaces the old one
            wd.keep_previous(out_dir / name)
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {kind: out_dir / name for kind, name in names.items()}


def evaluate_on_test(config: ml_collections.ConfigDict, method: methods.Method, params: Any,
                     workdir: Path, step: int) -> dict[str, float]:
    """Mean test metrics of a trained run against the first reference (eval_summary.json).

    The full comparison with the baselines is ``evaluate``'s job; this is the quick check that
    closes a training run.
    """
    images = input_pipeline.load_split(config.data, config.data.test_split, config.modality)
    outputs = predict(method, params, images, config.eval.batch_size)
    summary: dict[str, Any] = {"step": step}
    first_ref = REFERENCES[config.modality][0][1]
    for result in score(config.modality, outputs, images):
        if result.reference == first_ref:
            for metric, values in result.values.items():
                summary[f"{result.method} {metric}"] = float(np.mean(values))
    if jax.process_index() != 0:  # every process evaluates alike; one writes
        return summary
    wd.atomic_write(Path(workdir) / "eval_summary.json", json.dumps(summary, indent=1))
    print(f"{workdir}: test split vs {first_ref} at step {step}: " + ", ".join(
        f"{k} {v:.2f}" for k, v in summary.items() if k != "step"))
    return summary


def load_extra_baselines(data_cfg: ml_collections.ConfigDict, split: str,
                         images: Mapping[str, np.ndarray],
                         note_missing: bool = True) -> dict[str, np.ndarray]:
    """Baselines computed from raw data at preparation time (CT: TV), aligned to ``images``.

    They live in ``<dataset>/baselines_<split>.npz`` (arrays named by table column, plus
    ``patient_id`` and ``slice_index``), written by data_prep because they need the sinograms.
    ``note_missing``: print how to create a missing file (MRI has no such baselines: off).
    """
    if data_cfg.name == "synthetic":
        return {}
    path = input_pipeline.dataset_dir(data_cfg) / f"baselines_{split}.npz"
    if not path.exists():
        metadata = path.parent / "metadata.json"
        measured = metadata.exists() and json.loads(metadata.read_text()).get(
            "source") == "projections"  # raw projections: no TV baseline can be made
        if not note_missing or measured:
            return {}
        print(f"Note: {path} not found; baselines that need raw data (TV) are left out. "
              f"Create them with `python -m data_prep.{data_cfg.name.split('_')[0]} "
              f"--config={data_cfg.config} --baselines`.")
        return {}
    with np.load(path) as f:
        stored = {k: f[k] for k in f.files}
    index = {(int(p), int(s)): i for i, (p, s) in
             enumerate(zip(stored.pop("patient_id"), stored.pop("slice_index"), strict=True))}
    try:
        rows = [index[(int(p), int(s))] for p, s in
                zip(images["patient_id"], images["slice_index"], strict=True)]
    except KeyError as err:
        raise InputError(f"{path} lacks slice (patient_id, slice_index) = {err.args[0]} of the "
                         f"{split} split; rebuild it with --baselines.") from None
    return {k: v[rows] for k, v in stored.items() if not k.startswith("meta_")}


def evaluate(run_dirs: Sequence[str | Path], out_dir: str | Path,
             config: ml_collections.ConfigDict | None = None,
             figure_slice: int = 0, zoom_box: tuple[int, int, int] | None = None,
             batch_size: int = 4, checkpoint: str | int = "best") -> dict[str, Path]:
    """Runs every method on the test split and writes the table, CSV, JSON and figure.

    Args:
      run_dirs: training workdirs (any of noise2clean / noise2noise / consensus).
      out_dir: where table.md, table.csv, results.json and figure.png go.
      config: experiment config for the data when no run is given (baselines only).
      figure_slice: index of the test slice shown in the figure (fixed before seeing results).
      zoom_box: (row, col, size) of the figure's inset.
      checkpoint: which checkpoint of every run: "best" (lowest validation loss), "latest" or a
        step number; the table's header names the step used and why.
    """
    from consensus_jax import figures

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder (it is created if missing).")
    output_paths.check_writable(out / "table.md", "--out")
    if figure_slice < 0:
        raise ConfigError(f"--figure_slice={figure_slice}: must be a test slice index >= 0.")
    if zoom_box is not None and (len(zoom_box) != 3 or min(zoom_box) < 0 or zoom_box[2] < 2):
        raise ConfigError(f"--zoom={zoom_box}: expected row,col,size with row, col >= 0 and "
                          "size >= 2 pixels.")
    runs, chosen_by = [], []
    for d in run_dirs:  # every run's config and checkpoint, before anything is computed
        cfg = wd.load_config(d)
        method = methods.from_config(cfg)
        params, step, why = load_params(d, method, cfg, checkpoint)
        runs.append((method, params, step, cfg))
        chosen_by.append(why)
    if config is None:
        if not runs:
            raise ConfigError("Give at least one training workdir (--runs) or a --config.")
        config = runs[0][3]
    data_keys = ("name", "config")
    for d, (_, _, _, cfg) in zip(run_dirs, runs, strict=True):
        if any(cfg.data[k] != config.data[k] for k in data_keys) or cfg.modality != config.modality:
            raise RunError(f"Run {d} was trained on {cfg.modality} {cfg.data.name}/"
                           f"{cfg.data.config}, not {config.modality} {config.data.name}/"
                           f"{config.data.config}; evaluate runs of one dataset together.")
    filled: dict[str, str] = {}  # table column -> the run that fills it
    for d, (method, *_) in zip(run_dirs, runs, strict=True):
        for column in method.columns:
            if column in filled:
                raise ConfigError(f"Two runs fill the column {column!r}: {filled[column]} and "
                                  f"{d}; evaluate them separately.")
            filled[column] = str(d)
    modality = config.modality
    images = input_pipeline.load_split(config.data, config.data.test_split, modality)
    num, height, width = images["x1"].shape[:3]
    if figure_slice >= num:
        raise ConfigError(f"--figure_slice={figure_slice}: the test split has {num} slices "
                          f"(0 .. {num - 1}).")
    if zoom_box is not None and (zoom_box[0] + zoom_box[2] > height
                                 or zoom_box[1] + zoom_box[2] > width):
        raise ConfigError(f"--zoom={','.join(map(str, zoom_box))}: the box leaves the "
                          f"{height} x {width} test images.")
    outputs: dict[str, np.ndarray] = {}
    for name in METHOD_ORDER[modality][:2]:
        if BASELINE_FEATURE.get(name) in images:
            outputs[name] = images[BASELINE_FEATURE[name]]
    outputs.update(load_extra_baselines(config.data, config.data.test_split, images,
                                        note_missing=modality == "ct"))
    steps = {}
    spreads: dict[str, np.ndarray] = {}  # column -> its networks' spread, where it has one
    for d, (method, params, step, _) in zip(run_dirs, runs, strict=True):
        outputs.update(predict(method, params, images, batch_size))
        spread = predict_spread(method, params, images, batch_size)
        if spread is not None:
            spreads[method.columns[0]] = spread
        steps[str(d)] = step
    results = score(modality, outputs, images)
    spread_records = spread_error_correlations(modality, spreads, outputs, images)
    header = (f"{modality.upper()} test split of {config.data.name}/{config.data.config}: "
              f"{num} slices, mean ± std over slices. Runs: "
              + (", ".join(f"{d} (step {s}: {why})" for (d, s), why
                           in zip(steps.items(), chosen_by, strict=True)) or "none"))
    order = [m for m in METHOD_ORDER[modality] if m in outputs]
    reference_key = input_pipeline.REFERENCE_KEY[modality]
    panels = {("Full-dose FBP" if modality == "ct" else "Fully sampled"):
              images[reference_key][figure_slice]}
    panels.update({m: outputs[m][figure_slice] for m in order})
    first_ref = REFERENCES[modality][0][1]
    captions = {}
    for r in results:
        if r.reference == first_ref and r.method in panels:
            captions[r.method] = ", ".join(
                f"{METRIC_LABELS.get(k, k)} {v[figure_slice]:.1f}" for k, v in r.values.items())
    paths = write_outputs(out, modality, results, header, {"runs": steps}, figure=lambda path:
                          figures.comparison_figure(path, modality, panels, zoom_box, captions),
                          spread=spread_records)
    print(header)
    print(markdown_table(modality, results))
    if spread_records:
        print(f"\n{spread_table(spread_records)}\n")
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return paths


def trajectory(run_dirs: Sequence[str | Path], out_dir: str | Path,
               batch_size: int = 4) -> Path:
    """Test metrics (mean over slices, against the paper's reference) of every kept checkpoint of
    each run and of its best-validation checkpoint: how the test error moved during training and
    where validation selected. Writes trajectory.md and trajectory.json into ``out_dir``.

    A checkpoint that does not restore (a damaged file) is left out of the scores, named with
    the first line of its error in a warning, in trajectory.md and as a row with an ``error``
    (and no metrics) in trajectory.json; RunError when none of them restores.
    """
    rows, unrestored = [], []
    for d in run_dirs:
        config = wd.load_config(d)
        method = methods.from_config(config)
        images = input_pipeline.load_split(config.data, config.data.test_split, config.modality)
        mngr = wd.checkpoint_manager(Path(d), keep=1_000_000)
        steps = sorted(mngr.all_steps())
        mngr.close()
        resolve_checkpoint(d, "best")  # a run without checkpoints: MissingRunError, train it
        first_ref = REFERENCES[config.modality][0][1]
        for checkpoint in [*steps, "best"]:
            try:
                params, step, _ = load_params(d, method, config, checkpoint)
            except RunError as err:  # this one is damaged; the others may still be scored
                first_line = (str(err).strip().splitlines() or [""])[0]
                unrestored.append({"run": str(d), "checkpoint": str(checkpoint),
                                   "step": checkpoint if isinstance(checkpoint, int) else None,
                                   "error": first_line})
                continue
            outputs = predict(method, params, images, batch_size)
            for result in score(config.modality, outputs, images):
                if result.reference != first_ref:
                    continue
                rows.append({"run": str(d), "checkpoint": str(checkpoint), "step": step,
                             "method": result.method, "reference": first_ref,
                             **{k: float(np.mean(v)) for k, v in result.values.items()}})
    failures = "; ".join(f"{u['run']} checkpoint {u['checkpoint']}: {u['error']}"
                         for u in unrestored)
    if not rows:
        raise RunError(f"No checkpoint of {', '.join(map(str, run_dirs))} restores, so nothing "
                       f"is scored: {failures}")
    if unrestored:
        warnings.warn(f"Left out of the trajectory, as they do not restore: {failures}",
                      stacklevel=2)
    metric_names = [k for k in rows[0] if k not in
                    ("run", "checkpoint", "step", "method", "reference")]
    lines = ["| run | checkpoint | step | method | "
             + " | ".join(f"{METRIC_LABELS.get(m, m)} vs {rows[0]['reference']}"
                          for m in metric_names) + " |",
             "|---" * (4 + len(metric_names)) + "|"]
    for r in rows:
        label = "best (validation)" if r["checkpoint"] == "best" else "kept"
        lines.append(f"| {r['run']} | {label} | {r['step']} | {r['method']} | "
                     + " | ".join(f"{r[m]:.2f}" for m in metric_names) + " |")
    if unrestored:
        lines += ["", "Not scored, as they do not restore:"]
        lines += [f"- {u['run']}, checkpoint {u['checkpoint']}: {u['error']}" for u in unrestored]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = "\n".join(lines) + "\n"
    wd.atomic_write(out / "trajectory.md", table, keep=True)
    wd.atomic_write(out / "trajectory.json", json.dumps(rows + unrestored, indent=1), keep=True)
    print(table)
    return out / "trajectory.md"
