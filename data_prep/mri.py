"""Prepares the MRI dataset (TFDS ``mri_consensus``) and prints its split diagnostic.

  python -m data_prep.mri --config=quick                   # built-in knees, CPU demo size
  python -m data_prep.mri --config=knee                    # the paper's size (320 px, 15 coils)
  python -m data_prep.mri --config=mni                     # needs pip install -e .[mri-data]
  python -m data_prep.mri --config=fastmri --manual_dir=/data/knee_multicoil_train
  python -m data_prep.mri --config=quick --name=quick_snr30 --set snr=30

Rerunning a finished command reuses its output. TFDS writes into a temporary folder and renames it
when complete, so an interrupted build never loads as complete; rerun to rebuild it. After the
build this writes split_diagnostic.json into the dataset folder: mean, std and correlation of the
halves' errors n_i = x_i - x_ref (and against the noiseless x_clean) over every slice, the
correlation expected of the outer lines (-1/7 at 4x), and the RMSE of zero-filling, SENSE and one
amplified half against the references on the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from data_prep import check_reused_dataset

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def make_config(name: str, new_name: str | None, overrides: list[str]):
    """The preset ``name`` with ``key=value`` overrides under ``new_name``."""
    from data_prep.mri_consensus.mri_consensus_dataset_builder import PRESETS, MriConfig

    if name not in PRESETS:
        raise SystemExit(f"--config={name!r}: choose one of {sorted(PRESETS)}.")
    config = PRESETS[name]
    if not overrides:
        if new_name:
            raise SystemExit("--name is only for configs changed with --set.")
        return config
    if not new_name or new_name in PRESETS:
        raise SystemExit("Changing a preset with --set needs a new --name (not one of "
                         f"{sorted(PRESETS)}), so datasets with different settings never mix.")
    import tensorflow_datasets as tfds

    fields = ({f.name for f in dataclasses.fields(MriConfig)}
              - {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)})
    values = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {item!r}: use key=value with key in {sorted(fields)}.")
        values[key] = _parse_value(value)
    config = dataclasses.replace(config, name=new_name, description=f"{name} with {values}",
                                 **values)
    try:
        config.validate()
    except ValueError as err:
        raise SystemExit(f"--set {overrides}: {err}") from None
    return config


def build(config, data_dir: Path, manual_dir: Path | None):
    """Builds (or reuses) the dataset; returns the builder."""
    import tensorflow_datasets as tfds

    from consensus_jax.input_pipeline import import_tensorflow
    from data_prep.mri_consensus.mri_consensus_dataset_builder import Builder, list_patients

    import_tensorflow()
    builder = Builder(config=config, data_dir=str(data_dir))
    if builder.is_prepared():
        check_reused_dataset(builder.data_dir, config.metadata())
        print(f"Reusing the finished dataset in {builder.data_dir}.")
        return builder
    try:
        # Checks the sources (files, nilearn) before TFDS starts writing.
        list_patients(config, manual_dir)
    except (FileNotFoundError, ImportError, ValueError) as err:
        raise SystemExit(f"--config={config.name}: {err}") from None
    t0 = time.time()
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=download_config)
    print(f"Built {builder.data_dir} in {time.time() - t0:.0f} s.")
    return builder


class _PairStatistics:
    """Pooled mean, std and correlation of n1 = x1 - ref and n2 = x2 - ref, slice by slice.

    Real and imaginary parts count as separate values; only pixels of the support count.
    """

    def __init__(self) -> None:
        self.sums = dict.fromkeys(("n", "s1", "s2", "s11", "s22", "s12"), 0.0)

    def add(self, x1, x2, ref, support) -> None:
        import numpy as np

        n1 = (x1 - ref)[support].astype(np.float64)
        n2 = (x2 - ref)[support].astype(np.float64)
        for name, value in (("n", n1.size), ("s1", n1.sum()), ("s2", n2.sum()),
                            ("s11", (n1 * n1).sum()), ("s22", (n2 * n2).sum()),
                            ("s12", (n1 * n2).sum())):
            self.sums[name] += float(value)

    def result(self) -> dict[str, float]:
        s = self.sums
        m1, m2 = s["s1"] / s["n"], s["s2"] / s["n"]
        v1, v2 = s["s11"] / s["n"] - m1**2, s["s22"] / s["n"] - m2**2
        cov = s["s12"] / s["n"] - m1 * m2
        return {"mean_n1": m1, "mean_n2": m2, "std_n1": v1**0.5, "std_n2": v2**0.5,
                "correlation": cov / (v1 * v2) ** 0.5}


def split_report(builder) -> dict:
    """Split diagnostic (every slice) and baseline errors (test split), saved as
    split_diagnostic.json.

    Images are in the dataset's normalised units (x_est in [-1, 1]). The halves' errors are pooled
    over every slice of both splits on the coil-map support (where x_ref is non-zero; every image
    is zero outside it): per slice the correlation scatters by about +-0.14 around -1/7, as it
    depends on which high-energy lines next to the centre were sampled. RMSE is the complex RMSE
    x 10^-3 of the evaluation tables, mean over the test slices.
    """
    import numpy as np
    import tensorflow_datasets as tfds

    from consensus_jax.mri.masks import outer_line_probability, outer_region

    path = Path(builder.data_dir) / "split_diagnostic.json"
    if path.exists():
        return json.loads(path.read_text())
    vs_ref, vs_clean = _PairStatistics(), _PairStatistics()
    methods = {"Zero-filling": "x_zf", "SENSE": "x_est", "half x1 (amplified)": "x1"}
    refs = {"x_ref": "fully sampled", "x_clean": "noiseless"}
    errors: dict[str, dict[str, list[float]]] = {label: {m: [] for m in methods}
                                                 for label in refs.values()}
    num_slices = {}
    for split in ("train", "test"):
        num_slices[split] = 0
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            num_slices[split] += 1
            support = np.any(ex["x_ref"] != 0, axis=-1)
            vs_ref.add(ex["x1"], ex["x2"], ex["x_ref"], support)
            vs_clean.add(ex["x1"], ex["x2"], ex["x_clean"], support)
            if split != "test":
                continue
            for ref, label in refs.items():
                for m, k in methods.items():
                    d = ex[k].astype(np.float64) - ex[ref]
                    errors[label][m].append(float(np.sqrt(np.mean(np.sum(d**2, axis=-1)))))
    us = builder.builder_config.reconstruction().undersampling
    width = builder.info.features["mask"].shape[0]
    p = outer_line_probability(us, int(outer_region(width, us).sum()) + us.num_center_lines)
    report = {
        "units": "normalised images (x_est in [-1, 1]); RMSE is complex RMSE x 1e-3",
        "halves_vs_fully_sampled": vs_ref.result(),
        "halves_vs_noiseless": vs_clean.result(),
        "expected_outer_line_correlation": -1.0 / (2.0 / p - 1.0),
        "rmse_1e3": {label: {m: 1e3 * float(np.mean(v)) for m, v in e.items()}
                     for label, e in errors.items()},
        "num_slices": num_slices,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    return report


def _describe(report: dict) -> str:
    h, c = report["halves_vs_fully_sampled"], report["halves_vs_noiseless"]
    r = report["rmse_1e3"]["fully sampled"]
    rc = report["rmse_1e3"]["noiseless"]
    n = report["num_slices"]
    return (f"Split diagnostic ({n['train']} + {n['test']} slices, normalised units): "
            f"vs fully sampled: mean n1 {h['mean_n1']:.2e}, mean n2 {h['mean_n2']:.2e}, "
            f"std {h['std_n1']:.4f}/{h['std_n2']:.4f}, corr(n1, n2) {h['correlation']:.3f} "
            f"(outer lines alone: {report['expected_outer_line_correlation']:.3f}); vs noiseless: "
            f"mean {c['mean_n1']:.2e}/{c['mean_n2']:.2e}, corr {c['correlation']:.3f}.\n"
            f"Baselines on the {n['test']} test slices, complex RMSE x 1e-3 vs fully sampled "
            "(vs noiseless): "
            + ", ".join(f"{m} {r[m]:.1f} ({rc[m]:.1f})" for m in r) + ".")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quick", help="tiny | quick | knee | mni | fastmri")
    parser.add_argument("--data_dir", default="data/tfds", type=Path)
    parser.add_argument("--manual_dir", default=None, type=Path,
                        help="your fastMRI multi-coil .h5 files (fastmri config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="change a preset field (needs --name)")
    parser.add_argument("--name", default=None, help="name of a changed config")
    args = parser.parse_args(argv)
    config = make_config(args.config, args.name, args.overrides)
    if args.manual_dir is not None and not args.manual_dir.is_dir():
        raise SystemExit(f"--manual_dir {args.manual_dir} is not a folder.")
    builder = build(config, args.data_dir, args.manual_dir)
    print(_describe(split_report(builder)))
    print(f"Dataset ready: {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
