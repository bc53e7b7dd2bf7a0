"""Prepares the MRI dataset (TFDS ``mri_consensus``) and prints its split diagnostic.

  python -m data_prep.mri --config=quick                   # built-in knees, CPU demo size
  python -m data_prep.mri --config=knee                    # the paper's size (320 px, 15 coils)
  python -m data_prep.mri --config=mni                     # needs pip install -e .[mri-data]
  python -m data_prep.mri --config=fastmri --manual_dir=/data/knee_multicoil_train
  python -m data_prep.mri --config=quick --config.snr=30 --config.name=quick_snr30

``--config=quick`` is short for ``--config=configs/data/mri.py:quick`` (the presets: tiny, quick,
knee, mni, fastmri); ``--config.<field>=<value>`` changes a field of it, under a new
``--config.name``. Rerunning a finished command reuses its output. TFDS writes into a temporary
folder and renames it when complete, so an interrupted build never loads as complete; rerun to
rebuild it. After the build this writes split_diagnostic.json into the dataset folder: mean, std
and correlation of the halves' errors n_i = x_i - x_ref (and against the noiseless x_clean) over
every slice, the correlation expected of the outer lines (-1/7 at 4x), and the RMSE of
zero-filling, SENSE and one amplified half against the references on the test split.
"""

from __future__ import annotations

import os

from data_prep import cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    """Split diagnostic (every slice) and baseline errors (test split); ``cli.report`` saves it
    as split_diagnostic.json.

    Images are in the dataset's normalised units (x_est in [-1, 1]). The halves' errors are pooled
    over every slice of both splits on the coil-map support (where x_ref is non-zero; every image
    is zero outside it): per slice the correlation scatters by about +-0.14 around -1/7, as it
    depends on which high-energy lines next to the centre were sampled. RMSE is the complex RMSE
    x 10^-3 of the evaluation tables, mean over the test slices.
    """
    import numpy as np
    import tensorflow_datasets as tfds

    from consensus_jax.mri.masks import outer_line_probability, outer_region

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
    return {
        "units": "normalised images (x_est in [-1, 1]); RMSE is complex RMSE x 1e-3",
        "halves_vs_fully_sampled": vs_ref.result(),
        "halves_vs_noiseless": vs_clean.result(),
        "expected_outer_line_correlation": -1.0 / (2.0 / p - 1.0),
        "rmse_1e3": {label: {m: 1e3 * float(np.mean(v)) for m, v in e.items()}
                     for label, e in errors.items()},
        "num_slices": num_slices,
    }


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


MRI = cli.Modality(
    name="mri", builder_module="data_prep.mri_consensus.mri_consensus_dataset_builder",
    split_report=split_report, describe=_describe, check_sources=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.mri`` in this process (argv: the arguments after the program name)."""
    return cli.main(MRI, argv)


if __name__ == "__main__":
    cli.start(MRI)
