"""SSIM: ours (JAX, batched) next to skimage.metrics.structural_similarity on identical input.

    python -m bench.bench_ssim --size=512 --batch=16 --repeats=5 [--out=FILE]

Same settings as Table 1: Gaussian window sigma 1.5, population covariance, data range 400 HU
(the liver window). Reports seconds per image (median, min-max over repeats after a warm-up), the
speed ratio, and the largest absolute difference of the two SSIM values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from skimage.metrics import structural_similarity

from consensus_jax import metrics


def _images(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ref = np.cumsum(np.cumsum(rng.standard_normal((batch, size, size)), 1), 2)
    ref = (400 * (ref - ref.min()) / np.ptp(ref) - 160).astype(np.float32)
    return (ref + 25 * rng.standard_normal(ref.shape)).astype(np.float32), ref


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    x, ref = _images(args.batch, args.size)
    xj, rj = jnp.asarray(x), jnp.asarray(ref)
    ours_fn = lambda: jax.block_until_ready(metrics.ssim(xj, rj, 400.0))
    sk_fn = lambda: [structural_similarity(x[i], ref[i], data_range=400.0, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False)
                     for i in range(args.batch)]
    t0 = time.perf_counter()
    ours = np.asarray(ours_fn())
    compile_s = time.perf_counter() - t0
    theirs = np.asarray(sk_fn())
    times = {"ours": [], "skimage": []}
    for _ in range(args.repeats):  # alternate A/B: the cores are shared
        for name, fn in (("ours", ours_fn), ("skimage", sk_fn)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / args.batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"### SSIM, {args.batch} images of {args.size} x {args.size} (`python -m "
             f"bench.bench_ssim --size={args.size} --batch={args.batch} "
             f"--repeats={args.repeats}`)", "",
             "| implementation | s per image (median) | min-max | note |", "|---|---|---|---|"]
    for k in ("ours", "skimage"):
        note = f"first call incl. compile {compile_s:.2f} s" if k == "ours" else "per image loop"
        lines.append(f"| {k} | {med[k]:.4f} | {min(times[k]):.4f}-{max(times[k]):.4f} | {note} |")
    lines += ["", f"skimage / ours time ratio: **{med['skimage'] / med['ours']:.1f}x**; largest "
              f"|SSIM difference|: {np.max(np.abs(ours - theirs)):.2e}", ""]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
