"""Benchmark: CG-SENSE seconds per slice, ours (JAX) against ``sigpy.mri.app.SenseRecon``.

The paper-size problem: 15 coils, 320 x 320, a 4x random Cartesian mask with 48 centre lines,
30 CG iterations, the same k-space, maps and lambda for both. sigpy infers its sampling mask from
the non-zero k-space samples, so unsampled lines are zeroed exactly. Rows: ours on one slice,
ours on a batch of slices (per-slice time), sigpy on one slice; each the median over
``--repeats`` runs after a warm-up run, with the first (compiling) call of ours reported
separately. The relative difference ``||x_ours - x_sigpy|| / ||x_sigpy||`` is printed below.

Run: ``python -m bench.bench_sense --repeats 5 --out bench/RESULTS_sense.md``
(needs the ``bench`` extra for sigpy: ``pip install .[bench]``).
Double precision check: ``python -m bench.bench_sense --x64 --repeats 2``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
    """One benchmark row: seconds per slice."""

    implementation: str
    slices: int
    median_s: float
    min_s: float
    max_s: float
    first_call_s: float | None = None


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return first, runs


def make_problem(size: int, coils: int, num_center_lines: int, slices: int, seed: int,
                 dtype: np.dtype) -> dict[str, np.ndarray]:
    """Simulated knee slices: masked k-space [S, C, H, W], estimated maps, masks [S, W]."""
    from consensus_jax.mri.coils import estimate_sensitivity_maps
    from consensus_jax.mri.masks import Undersampling, sample_masks
    from consensus_jax.mri.simulate import CoilSimulation, simulate_kspace
    from consensus_jax.phantoms.knee import knee_phantom

    images = jnp.asarray(np.stack([knee_phantom(size, seed + s) for s in range(slices)]))
    sim = CoilSimulation(num_coils=coils, snr=100.0)
    keys = jax.random.split(jax.random.key(seed), slices)
    kspace, _, _ = jax.vmap(lambda im, k: simulate_kspace(im, k, sim))(images, keys)
    masks = sample_masks(jax.random.key(seed + 1), slices, size,
                         Undersampling(4.0, num_center_lines))
    # Zero the unsampled lines exactly: sigpy derives its mask from non-zero samples.
    kspace = kspace * masks[:, None, None, :].astype(jnp.float32)
    maps, _ = estimate_sensitivity_maps(kspace, num_center_lines)
    return {"kspace": np.asarray(kspace).astype(dtype), "maps": np.asarray(maps).astype(dtype),
            "mask": np.asarray(masks)}


def bench_ours(problem: dict[str, np.ndarray], lam: float, iters: int, repeats: int
               ) -> tuple[list[Timing], np.ndarray]:
    from consensus_jax.mri.sense import cg_sense

    k, maps, mask = (jnp.asarray(problem[n]) for n in ("kspace", "maps", "mask"))
    rows = []
    one = lambda: cg_sense(k[0], maps[0], mask[0], lam, iters).block_until_ready()  # noqa: E731
    first, runs = _time(one, repeats)
    rows.append(Timing("ours (JAX, jit)", 1, statistics.median(runs), min(runs), max(runs),
                       first))
    x0 = np.asarray(cg_sense(k[0], maps[0], mask[0], lam, iters))
    n = k.shape[0]
    if n > 1:
        batch = lambda: cg_sense(k, maps, mask, lam, iters).block_until_ready()  # noqa: E731
        first, runs = _time(batch, repeats)
        rows.append(Timing(f"ours (JAX, jit), batch of {n}", n, statistics.median(runs) / n,
                           min(runs) / n, max(runs) / n, first))
    return rows, x0


def bench_sigpy(problem: dict[str, np.ndarray], lam: float, iters: int, repeats: int
                ) -> tuple[list[Timing], np.ndarray]:
    from sigpy.mri.app import SenseRecon

    k, maps = problem["kspace"][0], problem["maps"][0]
    run = lambda: SenseRecon(k, maps, lamda=lam, max_iter=iters,  # noqa: E731
                             show_pbar=False).run()
    first, runs = _time(run, repeats)
    return [Timing("sigpy SenseRecon (numpy)", 1, statistics.median(runs), min(runs),
                   max(runs))], np.asarray(run())


def markdown_table(rows: list[Timing], size: int, coils: int, iters: int, dtype: str,
                   rel_diff: float | None) -> str:
    """The rows as a Markdown table with a header naming the machine."""
    lines = [
        f"### CG-SENSE, {coils} coils, {size} x {size}, 4x, {iters} iterations, {dtype}, "
        f"seconds per slice ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()})",
        "",
        "| implementation | slices per call | median s | min-max s | first call s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        first = "" if r.first_call_s is None else f"{r.first_call_s:.2f}"
        lines.append(f"| {r.implementation} | {r.slices} | {r.median_s:.3f} | "
                     f"{r.min_s:.3f}-{r.max_s:.3f} | {first} |")
    if rel_diff is not None:
        lines += ["", f"Relative difference ours vs sigpy (same input, maps, lambda, "
                      f"iterations): {rel_diff:.2e}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark, print the Markdown table, append it to ``--out`` if given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320, help="image size, px")
    parser.add_argument("--coils", type=int, default=15)
    parser.add_argument("--center-lines", type=int, default=48)
    parser.add_argument("--iters", type=int, default=30, help="CG iterations")
    parser.add_argument("--lam", type=float, default=1e-2, help="Tikhonov lambda")
    parser.add_argument("--batch", type=int, default=4, help="slices in the batched JAX row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--x64", action="store_true", help="complex128 for both")
    parser.add_argument("--out", default=None, help="Markdown file to append the table to")
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = np.complex128 if args.x64 else np.complex64
    problem = make_problem(args.size, args.coils, args.center_lines, max(args.batch, 1), 0,
                           dtype)
    rows, ours = bench_ours(problem, args.lam, args.iters, args.repeats)
    rel, note = None, ""
    try:
        sig_rows, theirs = bench_sigpy(problem, args.lam, args.iters, args.repeats)
        rows += sig_rows
        rel = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    except ImportError as err:
        note = f"\nsigpy not available ({err}); `pip install .[bench]`.\n"
    table = markdown_table(rows, args.size, args.coils, args.iters, np.dtype(dtype).name,
                           rel) + note
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
