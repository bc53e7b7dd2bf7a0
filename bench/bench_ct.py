"""Benchmark: seconds per 512 x 512 slice for our JAX CT operators against scikit-image and astra.

Rows: our fan-beam FBP (1152 views, the LDCT Grand Challenge geometry) and fan-beam forward
projector (2304 views), our parallel-beam FBP and forward projector at the same sizes, then
scikit-image's ``iradon`` / ``radon`` (parallel beam) and, when ``astra-toolbox`` imports, astra's
CPU parallel-beam FBP / forward projection (``linear`` = Joseph projector). Each timing is the
median over ``--repeats`` runs after one warm-up run; the first (compiling) call of a JAX
function is reported separately.

Run: ``python -m bench.bench_ct --repeats 5 --out bench/RESULTS_ct.md``
Quick check: ``python -m bench.bench_ct --size 128 --fbp-views 180 --fp-views 360 --repeats 2``
Per-core FBP comparison on a busy machine: ``taskset -c 0 python -m bench.bench_ct --fbp-only``
Dose calibration instead of timing: ``python -m bench.bench_ct --calibrate`` (quarter-dose FBP
noise against full-dose FBP, in HU, for several full-dose I0 on water ellipse phantoms).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
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
    operation: str
    views: int
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


def _row(implementation: str, operation: str, views: int, first: float, runs: list[float],
         compiles: bool) -> Timing:
    return Timing(implementation, operation, views, statistics.median(runs), min(runs),
                  max(runs), first if compiles else None)


def _phantom(size: int) -> np.ndarray:
    # A water disc with two inserts, attenuation in 1/mm; the content does not affect the timing.
    c = np.arange(size) - (size - 1) / 2.0
    x, y = np.meshgrid(c, -c)
    r = size / 2.0
    image = 0.0192 * (x ** 2 + y ** 2 < (0.8 * r) ** 2)
    image += 0.004 * ((x - 0.3 * r) ** 2 + y ** 2 < (0.15 * r) ** 2)
    image -= 0.003 * (x ** 2 + (y + 0.3 * r) ** 2 < (0.1 * r) ** 2)
    return image.astype(np.float32)


def bench_ours(size: int, fbp_views: int, fp_views: int, repeats: int,
               forward: bool = True) -> list[Timing]:
    from consensus_jax.ct.fbp import fbp
    from consensus_jax.ct.geometry import FanBeamGeometry, ImageGrid, ParallelBeamGeometry
    from consensus_jax.ct.projector import forward_project

    # The scanner's 0.7 mm pixels at 512 px; other sizes keep the same 358 mm field.
    grid = ImageGrid(size, 0.7 * 512 / size)
    image = jnp.asarray(_phantom(size))
    rows = []
    fan_fp = FanBeamGeometry(image=grid, num_views=fp_views)
    fan_fbp = FanBeamGeometry(image=grid, num_views=fbp_views)
    par_fp = ParallelBeamGeometry(grid, fp_views, size, grid.pixel_size_mm)
    par_fbp = ParallelBeamGeometry(grid, fbp_views, size, grid.pixel_size_mm)
    for name, fp_geom, fbp_geom in (("fan", fan_fp, fan_fbp), ("parallel", par_fp, par_fbp)):
        if forward:
            first, runs = _time(lambda g=fp_geom: forward_project(image, g).block_until_ready(),
                                repeats)
            rows.append(_row("consensus_jax (JAX)", f"{name} forward projection", fp_views,
                             first, runs, True))
        sino = forward_project(image, fbp_geom).block_until_ready()
        first, runs = _time(lambda g=fbp_geom, s=sino: fbp(s, g).block_until_ready(), repeats)
        rows.append(_row("consensus_jax (JAX)", f"{name} FBP (Hann)", fbp_views, first, runs,
                         True))
    return rows


def bench_skimage(size: int, fbp_views: int, fp_views: int, repeats: int,
                  forward: bool = True) -> list[Timing]:
    from skimage.transform import iradon, radon

    image = _phantom(size)
    theta_fp = np.arange(fp_views) * 180.0 / fp_views
    theta_fbp = np.arange(fbp_views) * 180.0 / fbp_views
    sino = radon(image, theta_fbp, circle=True)
    rows = []
    if forward:
        first, runs = _time(lambda: radon(image, theta_fp, circle=True), repeats)
        rows.append(_row("scikit-image", "parallel forward projection (radon)", fp_views, first,
                         runs, False))
    first, runs = _time(lambda: iradon(sino, theta_fbp, filter_name="hann", circle=True),
                        repeats)
    rows.append(_row("scikit-image", "parallel FBP (iradon, Hann)", fbp_views, first, runs,
                     False))
    return rows


def bench_astra(size: int, fbp_views: int, fp_views: int, repeats: int,
                forward: bool = True) -> list[Timing]:
    import astra

    image = _phantom(size)
    vol = astra.create_vol_geom(size, size)
    rows = []
    proj_fp = astra.create_proj_geom("parallel", 1.0, size,
                                     np.arange(fp_views) * math.pi / fp_views)
    projector_fp = astra.create_projector("linear", proj_fp, vol)

    def forward_once():
        sino_id, _ = astra.create_sino(image, projector_fp)
        astra.data2d.delete(sino_id)

    if forward:
        first, runs = _time(forward_once, repeats)
        rows.append(_row("astra-toolbox (CPU)", "parallel forward projection (linear)",
                         fp_views, first, runs, False))
    proj_fbp = astra.create_proj_geom("parallel", 1.0, size,
                                      np.arange(fbp_views) * math.pi / fbp_views)
    projector_fbp = astra.create_projector("linear", proj_fbp, vol)
    sino_id, _ = astra.create_sino(image, projector_fbp)
    recon_id = astra.data2d.create("-vol", vol)
    cfg = astra.astra_dict("FBP")
    cfg.update(ReconstructionDataId=recon_id, ProjectionDataId=sino_id,
               ProjectorId=projector_fbp, FilterType="hann")
    algorithm = astra.algorithm.create(cfg)
    first, runs = _time(lambda: astra.algorithm.run(algorithm), repeats)
    rows.append(_row("astra-toolbox (CPU)", "parallel FBP (Hann)", fbp_views, first, runs,
                     False))
    astra.algorithm.delete(algorithm)
    astra.data2d.delete([sino_id, recon_id])
    astra.projector.delete([projector_fp, projector_fbp])
    return rows


def calibration_table(photons: tuple[float, ...] = (2.5e3, 7.5e3, 2e4, 1e5),
                      seed: int = 0) -> str:
    """Quarter-dose FBP noise (RMSE against the full-dose FBP, HU, inside the field of view) for
    each full-dose I0, on a water ellipse with a fat-like and a bone-like insert in air:
    128 px / 1.5 mm parallel beam with 360 views over pi (ellipse 170 x 130 mm) and 256 px /
    1.4 mm with the challenge fan-beam scanner, 2304 views (ellipse 340 x 260 mm, abdomen-sized).
    """
    from consensus_jax.ct.geometry import (
        Ellipse,
        FanBeamGeometry,
        ImageGrid,
        ParallelBeamGeometry,
        ellipse_image,
    )
    from consensus_jax.ct.simulate import default_noise_mask, low_dose_noise_hu, simulate_slice
    from consensus_jax.ct.split import split_noise_diagnostic

    def body(scale: float) -> tuple[Ellipse, ...]:
        return (Ellipse((0.0, 0.0), (85.0 * scale, 65.0 * scale), 0.0, 1000.0),
                Ellipse((25.0 * scale, 10.0 * scale), (15.0 * scale, 10.0 * scale), 0.3, -100.0),
                Ellipse((-30.0 * scale, -10.0 * scale), (8.0 * scale, 8.0 * scale), 0.0, 700.0))

    setups = (
        ("parallel, 128 px x 1.5 mm, 360 views",
         ParallelBeamGeometry(ImageGrid(128, 1.5), 360, 184, 1.5), body(1.0)),
        ("fan (challenge scanner), 256 px x 1.4 mm, 2304 views",
         FanBeamGeometry(image=ImageGrid(256, 1.4)), body(2.0)),
    )
    lines = ["| setup | full-dose I0 (photons/ray) | quarter-dose FBP noise vs full dose (HU) |",
             "| --- | ---: | ---: |"]
    diagnostics = ["| setup | full-dose I0 | corr(n1, n2) odd/even | corr full vs quarter dose "
                   "| std n1 (HU) | std of x_est - x_clean (HU) |",
                   "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, geometry, ellipses in setups:
        hu = (ellipse_image(ellipses, geometry.image, supersampling=2) - 1000.0).astype(
            np.float32)
        for i0 in photons:
            noise = low_dose_noise_hu(hu, geometry, i0, jax.random.key(seed))
            lines.append(f"| {name} | {i0:g} | {noise:.1f} |")
        i0 = photons[1]
        out = simulate_slice(hu, geometry, i0, jax.random.key(seed))
        fov = default_noise_mask(geometry)
        halves = split_noise_diagnostic(out["x1"], out["x2"], out["x_clean"], fov)
        doses = split_noise_diagnostic(out["x_full"], out["x_est"], out["x_clean"], fov)
        diagnostics.append(f"| {name} | {i0:g} | {halves.correlation:.3f} | "
                           f"{doses.correlation:.3f} | {1000 * halves.std_n1:.1f} | "
                           f"{1000 * doses.std_n2:.1f} |")
    return "\n".join(lines) + "\n\n" + "\n".join(diagnostics) + "\n"


def markdown_table(rows: list[Timing], size: int) -> str:
    """The rows as a Markdown table with a header naming the machine."""
    lines = [
        f"### CT operators, {size} x {size} image, seconds per slice "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__} on {jax.default_backend()})",
        "",
        "| implementation | operation | views | median s | min-max s | first call s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        first = "" if r.first_call_s is None else f"{r.first_call_s:.2f}"
        lines.append(f"| {r.implementation} | {r.operation} | {r.views} | {r.median_s:.3f} | "
                     f"{r.min_s:.3f}-{r.max_s:.3f} | {first} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark, print the Markdown table, append it to ``--out`` if given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image size, px")
    parser.add_argument("--fbp-views", type=int, default=1152)
    parser.add_argument("--fp-views", type=int, default=2304)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "skimage", "astra"])
    parser.add_argument("--fbp-only", action="store_true", help="skip the forward projections")
    parser.add_argument("--calibrate", action="store_true",
                        help="print the dose calibration table instead of timings")
    parser.add_argument("--out", default=None, help="Markdown file to append the table to")
    args = parser.parse_args(argv)
    if args.calibrate:
        table = calibration_table()
        print(table)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(table + "\n")
        return table
    rows: list[Timing] = []
    notes = []
    forward = not args.fbp_only
    if "ours" not in args.skip:
        rows += bench_ours(args.size, args.fbp_views, args.fp_views, args.repeats, forward)
    if "skimage" not in args.skip:
        rows += bench_skimage(args.size, args.fbp_views, args.fp_views, args.repeats, forward)
    if "astra" not in args.skip:
        try:
            rows += bench_astra(args.size, args.fbp_views, args.fp_views, args.repeats, forward)
        except ImportError as err:
            notes.append(f"astra-toolbox not available ({err}); `pip install astra-toolbox`.")
    table = markdown_table(rows, args.size) + "".join(f"\n{n}\n" for n in notes)
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
