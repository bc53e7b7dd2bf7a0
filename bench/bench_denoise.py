"""Denoising new scans: size of an exported model and seconds per 512 x 512 slice.

For the quick and paper UNets (``configs/ct_quick.py``, ``configs/ct_paper.py``), a single
image-domain network (what ``loss.kind=distill`` trains) and the consensus pair are trained for
one step on synthetic slices (the time depends on the architecture, not on the weights), exported
with ``python -m consensus_jax.export``'s code, loaded back as ``load_model.py`` would, and timed
on batches of 512 x 512 slices (median of the repeats after one warm-up call).

    python -m bench.bench_denoise --sizes=quick,paper --batch=4 --repeats=3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from configs import ct_paper, ct_quick, tiny
from consensus_jax import artifact, experiment
from consensus_jax import export as cj_export

CONFIGS = {"quick": ct_quick, "paper": ct_paper}


def _trained_run(size: str, kind: str, workdir: Path) -> Path:
    config = tiny.get_config()
    model = CONFIGS[size].get_config().model
    config.model.base_features, config.model.depth = model.base_features, model.depth
    config.loss.kind = "noise2clean" if kind == "single" else "consensus"
    config.loss.beta_r = 0.0 if kind == "single" else config.loss.beta_r
    config.data.synthetic_size_px = 2 ** model.depth * 4
    config.train.patch_size_px = 2 ** model.depth * 2
    config.train.num_steps = 1
    config.train.eval_every_steps = 0
    config.train.tensorboard = config.train.progress = False
    experiment.fit(config, workdir)
    return workdir


def measure(size: str, kind: str, batch: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = _trained_run(size, kind, Path(tmp) / "run")
        folder = cj_export.write(*cj_export.build(run, "latest"), Path(tmp) / "exported")
        megabytes = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        model = artifact.Model.load(folder)
        rng = np.random.default_rng(0)
        images = [rng.normal(0, 100, (batch, 512, 512)).astype(np.float32)
                  for _ in model.inputs]
        model.denoise(*images, batch_size=batch)  # compiles
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.denoise(*images, batch_size=batch)
            times.append((time.perf_counter() - t0) / batch)
    row = {"size": size, "model": "one network (distilled)" if kind == "single" else
           "consensus pair", "megabytes": megabytes, "s_per_slice": statistics.median(times)}
    print(row, flush=True)
    return row


def table(rows: list[dict], batch: int) -> str:
    lines = [f"Backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax "
             f"{jax.__version__}; batches of {batch} slices of 512 x 512; medians.", "",
             "| UNet | model | exported size (MB) | seconds per slice |", "|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['model']} | {r['megabytes']:.1f} | {r['s_per_slice']:.3f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="quick,paper")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(size, kind, args.batch, args.repeats)
            for size in args.sizes.split(",") for kind in ("single", "pair")]
    print(table(rows, args.batch))


if __name__ == "__main__":
    main()
