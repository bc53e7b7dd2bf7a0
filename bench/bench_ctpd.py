"""Benchmark: helical -> fan-beam rebinning (SSR) and FBP of one slice, and its accuracy.

Timing (the data set's geometry: 736 channels, 64 rows, 2304 views per rotation, pitch 1, an
in-plane flying focal spot, one 512 x 512 slice at 0.7 mm): ``rebin`` of one slice (JAX, jitted;
median of ``--repeats`` after a warm-up, first call reported separately), three FBPs (the odd
views, the even views, all views; Hann), the x1 / x2 / x_est of one slice as
``projection_input`` makes them (two half FBPs, x_est their mean) against rebin + three FBPs,
and the plain-NumPy reference
``numpy_rebin_reference`` timed on ``--ref-views`` of the 2304 output views and extrapolated to
the slice, its values compared with ``rebin``'s on those views. The projections are smooth
synthetic values made in memory (the timing does not depend on them); no files.

Accuracy (noiseless analytic phantom of ellipsoids and cylinders, exact line integrals): the FBP
of the rebinned helical projections against the FBP of the exact fan-beam projections of the
same slice on the same geometry, RMSE and max |error| in HU inside the field of view, worst of
slices at z = 0, 2 and 4 mm, for pitch 0.6 / 1.0 / 1.4 and 16 / 64 rows, with fewer channels and
views than the scanner (``--channels``, ``--views``; the channel pitch is scaled so the fan keeps
its 50 cm field). Beside it: the fraction of samples read past the edge rows, and the same error
for the central row of the nearest view (no rebinning). Then the flying-focal-spot table: the
three ``ffs`` modes on an FFSXY scan.

Run: ``python -m bench.bench_ctpd`` (about a minute on 2 CPU cores)
Quick check: ``python -m bench.bench_ctpd --repeats 1 --ref-views 8 --channels 128 --views 288``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np

from consensus_jax.ct import projection_input
from consensus_jax.ct import rebin as rb
from consensus_jax.ct.fbp import fbp
from consensus_jax.ct.geometry import ImageGrid
from data_prep import ctpd as writer


def _time(fn, repeats: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return first, runs


def _synthetic_projections(scan: rb.HelicalScan, views: np.ndarray) -> np.ndarray:
    """Smooth line-integral-like values [n, rows, channels] in [0, ~8], float32."""
    k = np.linspace(-1, 1, scan.num_channels)[None, None, :]
    r = np.linspace(-1, 1, scan.num_rows)[None, :, None]
    a = scan.source_angles_rad[views][:, None, None]
    p = 6.0 * np.clip(1 - k ** 2, 0, None) * (1 + 0.2 * np.sin(3 * a + 2 * k) + 0.05 * r * k)
    return p.astype(np.float32)


def timing(repeats: int, ref_views: int) -> list[str]:
    preset = writer.ScanPreset(num_channels=736, num_rows=64, views_per_rotation=2304,
                               num_rotations=1.2, pitch=1.0, ffs_mode="FFSXY")
    scan = writer.helical_scan(preset)
    z = [0.0]
    views = rb.views_needed(scan, z)
    proj = _synthetic_projections(scan, views)
    grid = ImageGrid(512, 0.7)
    lines = ["| step | views | median s | min-max s | first call s |", "|---|---|---|---|---|"]

    def row(name, n, first, runs, note=""):
        lines.append(f"| {name} | {n} | {statistics.median(runs):.3f} | {min(runs):.3f}-"
                     f"{max(runs):.3f} | {first:.2f}{note} |")

    proj_j = jax.numpy.asarray(proj)
    first, runs = _time(lambda: rb.rebin(proj_j, scan, views, z).block_until_ready(), repeats)
    row("rebin 1 slice (JAX, ffs=native)", scan.views_per_rotation, first, runs)
    rebin_median = statistics.median(runs)
    sino = rb.rebin(proj_j, scan, views, z)[0]
    groups = rb.fan_geometries(scan, grid)  # even and odd views: the two focal spots
    half_fbp: list[float] = []
    for g, name in zip(groups, ("FBP even views (focal spot 1)", "FBP odd views (focal spot 2)"),
                       strict=True):
        s = sino[g.views]
        first, runs = _time(lambda s=s, g=g: fbp(s, g.geometry).block_until_ready(), repeats)
        row(name, g.views.size, first, runs)
        half_fbp.append(statistics.median(runs))
    common = rb.fan_geometry(scan, grid, "common")
    sino_common = rb.rebin(proj_j, scan, views, z, ffs="common")[0]
    first, runs = _time(lambda: fbp(sino_common, common).block_until_ready(), repeats)
    row("FBP all views (one geometry, ffs=common)", scan.views_per_rotation, first, runs)
    first, runs = _time(lambda: rb.reconstruct(sino, groups).block_until_ready(), repeats)
    row("FBP all views (ffs=native: both focal spots)", scan.views_per_rotation, first, runs)
    fbp_all = statistics.median(runs)

    # One slice of the training data as data preparation and denoising make it
    # (projection_input): the halves' FBPs, and x_est as their mean instead of a third FBP.
    halves = projection_input.half_groups(groups, scan.views_per_rotation)
    first, runs = _time(lambda: projection_input.quarter_dose_images(sino[None], halves),
                        repeats)
    row("x1, x2, x_est (two half FBPs, x_est = (x1 + x2) / 2)", scan.views_per_rotation, first,
        runs)
    images = projection_input.quarter_dose_images(sino[None], halves)
    direct = np.asarray(rb.reconstruct(sino, groups))
    identity = float(np.abs(images["x_est"][0] - direct).max() / np.abs(direct).max())
    three = rebin_median + sum(half_fbp) + fbp_all
    two = rebin_median + statistics.median(runs)
    lines.append(f"| rebin + 3 FBPs (x1, x2, x_est each by FBP) | | {three:.3f} | | |")
    lines.append(f"| rebin + x1, x2, x_est (projection_input) | | {two:.3f} | | |")

    # The NumPy reference on a fraction of the output views, extrapolated to the slice.
    subset = np.linspace(0, scan.views_per_rotation - 1, ref_views).astype(int)
    start = time.perf_counter()
    ref = rb.numpy_rebin_reference(proj, scan, views, z, output_views=subset)[0]
    spent = time.perf_counter() - start
    per_slice = spent * scan.views_per_rotation / ref_views
    lines.append(f"| rebin 1 slice (NumPy loops, {ref_views} of {scan.views_per_rotation} views "
                 f"timed: {spent:.2f} s, extrapolated) | {scan.views_per_rotation} | "
                 f"{per_slice:.1f} | | |")
    ours = np.asarray(sino)[subset]
    rel = float(np.abs(ours - ref[subset]).max() / np.abs(ref[subset]).max())
    lines.append("")
    lines.append(f"JAX vs NumPy reference on those views: max |difference| / max |value| = "
                 f"{rel:.2e} (limit 1e-4); the jitted rebinning is {per_slice / rebin_median:.0f}x "
                 "faster than the loops. x_est = (x1 + x2) / 2 vs the FBP of all views: max "
                 f"|difference| / max |value| = {identity:.1e}.")
    return lines


def _fov_errors(a, b, grid):
    d = 1000.0 * (np.asarray(a) - np.asarray(b))[..., grid.fov_mask()] / writer.MU_WATER
    return float(np.sqrt(np.mean(d ** 2))), float(np.abs(d).max())


def _exact(scan, groups, shapes, z):
    out = np.zeros((scan.views_per_rotation, scan.num_channels))
    for g in groups:
        out[g.views] = writer.fan_line_integrals(shapes, g.geometry, z)
    return out


def accuracy(channels: int, views_per_rotation: int, size: int) -> list[str]:
    shapes = writer.ellipsoid_phantom()
    grid = ImageGrid(size, 384.0 / size)
    slices = [0.0, 2.0, 4.0]
    lines = ["| rows | pitch | SSR RMSE HU | SSR max HU | samples past edge rows | central row "
             "RMSE HU | central row max HU |", "|---|---|---|---|---|---|---|"]
    for rows in (16, 64):
        for pitch in (0.6, 1.0, 1.4):
            preset = writer.ScanPreset(num_channels=channels, num_rows=rows,
                                       views_per_rotation=views_per_rotation,
                                       num_rotations=3.0, pitch=pitch, ffs_mode="FFSNONE")
            scan = writer.helical_scan(preset)
            views = rb.views_needed(scan, slices)
            proj = writer.project_shapes(shapes, scan, views)
            groups = rb.fan_geometries(scan, grid)
            g = groups[0].geometry
            recon = np.asarray(rb.reconstruct(rb.rebin(proj, scan, views, slices), groups))
            worst = (0.0, 0.0)
            worst_naive = (0.0, 0.0)
            outside = 0.0
            for i, z in enumerate(slices):
                reference = np.asarray(fbp(_exact(scan, groups, shapes, z), g))
                e = _fov_errors(recon[i], reference, grid)
                worst = (max(worst[0], e[0]), max(worst[1], e[1]))
                slot = np.searchsorted(views, rb.select_views(scan, z))
                centre = proj[slot, rows // 2 - 1: rows // 2 + 1].mean(axis=1)
                e = _fov_errors(fbp(centre, g), reference, grid)
                worst_naive = (max(worst_naive[0], e[0]), max(worst_naive[1], e[1]))
                outside = max(outside, rb.rows_outside_fraction(scan, z))
            lines.append(f"| {rows} | {pitch} | {worst[0]:.2f} | {worst[1]:.1f} | "
                         f"{100 * outside:.1f}% | {worst_naive[0]:.2f} | {worst_naive[1]:.1f} |")
    return lines


def ffs_table(channels: int, views_per_rotation: int, size: int) -> list[str]:
    shapes = writer.ellipsoid_phantom()
    grid = ImageGrid(size, 384.0 / size)
    preset = writer.ScanPreset(num_channels=channels, num_rows=64,
                               views_per_rotation=views_per_rotation, num_rotations=3.0,
                               pitch=1.0, ffs_mode="FFSXY")
    scan = writer.helical_scan(preset)
    views = rb.views_needed(scan, [0.0])
    proj = writer.project_shapes(shapes, scan, views)
    native = rb.fan_geometries(scan, grid, "native")
    reference = np.asarray(rb.reconstruct(_exact(scan, native, shapes, 0.0), native))
    lines = ["| ffs mode | RMSE HU | max HU |", "|---|---|---|"]
    for mode in rb.FFS_MODES:
        recon = rb.reconstruct(rb.rebin(proj, scan, views, [0.0], ffs=mode),
                               rb.fan_geometries(scan, grid, mode))[0]
        e = _fov_errors(recon, reference, grid)
        lines.append(f"| {mode} | {e[0]:.2f} | {e[1]:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref-views", type=int, default=48,
                        help="output views the NumPy reference is timed on")
    parser.add_argument("--channels", type=int, default=256, help="accuracy tables' channels")
    parser.add_argument("--views", type=int, default=576,
                        help="accuracy tables' views per rotation")
    parser.add_argument("--size", type=int, default=128, help="accuracy tables' image size (px)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    print(f"## Helical rebinning (SSR) + FBP, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()})\n")
    if not args.skip_timing:
        print("### One 512 x 512 slice: 736 channels, 64 rows, 2304 views per rotation, FFSXY\n")
        print("\n".join(timing(args.repeats, args.ref_views)) + "\n")
    if not args.skip_accuracy:
        print(f"### Accuracy: FBP of rebinned vs exact fan-beam projections, noiseless phantom "
              f"({args.channels} channels, {args.views} views per rotation, {args.size} px at "
              f"{384.0 / args.size:.1f} mm, no FFS; worst of z = 0, 2, 4 mm)\n")
        print("\n".join(accuracy(args.channels, args.views, args.size)) + "\n")
        print("### Flying focal spot (FFSXY, 64 rows, pitch 1, z = 0; reference: exact "
              "projections at each focal spot's own rays)\n")
        print("\n".join(ffs_table(args.channels, args.views, args.size)))


if __name__ == "__main__":
    main()
