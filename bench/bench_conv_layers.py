"""Where the train step's time goes: the UNet's 3x3 convolutions alone, JAX next to PyTorch.

For every 3x3 convolution of the UNet at a benchmark size (``bench_train_step.SIZES``) this times
the three convolutions a train step runs for it (forward, input gradient, weight gradient) in JAX
and in PyTorch on identical arrays, alternating A/B, and sums them over the layers and the two
networks: the convolution time of one consensus step. The whole step of both implementations is
timed in the same run, so the step splits into "3x3 convolutions" and "everything else" (pooling,
up-convolution GEMMs, concatenation, bias/ReLU, loss, Adam) for each implementation. The split is
an estimate: inside a step XLA runs independent work of the two networks side by side, so its
convolutions can cost less than the sum of the same calls timed one at a time; and a standalone
call allocates its output afresh, so the weight gradients at 64 px vary by up to 2x between runs
(whole steps vary less).

Run (needs ``pip install torch==2.13.0``, the CPU wheel; about 4 minutes on 2 cores):

    python -m bench.bench_conv_layers --sizes=quick,paper --repeats=5

JAX convolutions are compiled with the train step's options (``xla_options``; on CPU XLA's Eigen
kernels) and, with ``--xla_defaults``, also with XLA's defaults (YNNPACK). PyTorch runs
``aten.convolution_backward``, the call autograd makes (oneDNN on CPU), in channels_last. The first
layer's input gradient is not part of a train step (the input needs none) and is not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bench.bench_train_step import (
    SIZES,
    Size,
    _data,
    _model,
    emit,
    make_jax_runner,
    make_torch_runner,
    torch_available,
)
from bench.bench_train_step import time_alternating as step_time_alternating
from consensus_jax.models import UNetConfig
from consensus_jax.xla_options import default_compiler_options

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PARTS = ("fwd", "dx", "dk")


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One 3x3 'SAME' convolution of the UNet: [batch, px, px, cin] -> [batch, px, px, cout]."""

    batch: int
    px: int
    cin: int
    cout: int
    needs_dx: bool  # False for the first layer: a train step needs no gradient of its input

    @property
    def label(self) -> str:
        return f"{self.px} px, {self.cin}->{self.cout}"

    @property
    def gflop(self) -> float:
        """FLOPs of one of its three convolutions (2 x multiply-adds, all taps), in GFLOP."""
        return 2 * self.batch * self.px**2 * 9 * self.cin * self.cout / 1e9


def conv_layers(model: UNetConfig, batch: int, px: int) -> list[ConvLayer]:
    """The 3x3 convolutions of ``models.UNet`` in execution order (same walk as
    ``bench_train_step.unet_forward_macs``)."""
    layers, cin = [], model.in_channels
    for level in range(model.depth + 1):
        f, p = model.base_features * 2**level, px >> level
        layers += [ConvLayer(batch, p, cin, f, needs_dx=level > 0), ConvLayer(batch, p, f, f, True)]
        cin = f
    for level in reversed(range(model.depth)):
        f, p = model.base_features * 2**level, px >> level
        layers += [ConvLayer(batch, p, 2 * f, f, True), ConvLayer(batch, p, f, f, True)]
    return layers


def _conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def jax_parts(layer: ConvLayer, options: dict, seed: int = 0
              ) -> tuple[dict[str, Callable[[], object]], dict[str, np.ndarray]]:
    """Compiled forward / input-gradient / weight-gradient calls on fixed arrays, and their
    outputs (for the comparison with PyTorch)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(layer.batch, layer.px, layer.px, layer.cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, layer.cin, layer.cout)) / np.sqrt(9 * layer.cin),
                    jnp.float32)
    g = jnp.asarray(rng.normal(size=(layer.batch, layer.px, layer.px, layer.cout)), jnp.float32)

    def part(which: str):
        def f(x, k, g):
            y, vjp = jax.vjp(_conv, x, k)
            if which == "fwd":
                return y
            dx, dk = vjp(g)
            return dx if which == "dx" else dk
        return jax.jit(f).lower(x, k, g).compile(options)

    calls, outs = {}, {}
    for which in PARTS:
        c = part(which)
        calls[which] = (lambda c=c: jax.block_until_ready(c(x, k, g)))
        outs[which] = np.asarray(c(x, k, g))
    outs["inputs"] = (np.asarray(x), np.asarray(k), np.asarray(g))
    return calls, outs


def torch_parts(inputs: tuple[np.ndarray, np.ndarray, np.ndarray]
                ) -> tuple[dict[str, Callable[[], object]], dict[str, np.ndarray]]:
    """The same three convolutions in PyTorch (channels_last), through the calls autograd makes."""
    import torch

    x, k, g = inputs
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last)
    tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).contiguous(
        memory_format=torch.channels_last)
    tg = torch.from_numpy(g.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last)
    conv_bwd = torch.ops.aten.convolution_backward

    def bwd(mask):
        return conv_bwd(tg, tx, tk, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    calls = {
        "fwd": lambda: torch.nn.functional.conv2d(tx, tk, padding=1),
        "dx": lambda: bwd([True, False, False])[0],
        "dk": lambda: bwd([False, True, False])[1],
    }
    outs = {
        "fwd": calls["fwd"]().permute(0, 2, 3, 1).numpy(),
        "dx": calls["dx"]().permute(0, 2, 3, 1).numpy(),
        "dk": calls["dk"]().permute(2, 3, 1, 0).numpy(),
    }
    return calls, outs


def _inner(call: Callable[[], object], target_s: float = 0.02) -> int:
    call()
    t = time.perf_counter()
    call()
    return max(1, int(target_s / max(time.perf_counter() - t, 1e-6)))


def time_alternating(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call, the calls alternating within every repeat.

    Each timed block starts with untimed calls of the same function (a quarter of the block):
    PyTorch's OpenMP threads spin for a while after a parallel region, and without the warm-up
    that spinning and the cold caches are charged to the next implementation's first calls
    (up to 2x on the 1-3 ms calls of the quick size).
    """
    inner = {name: _inner(c) for name, c in calls.items()}
    ts: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, c in calls.items():
            for _ in range(max(1, inner[name] // 4)):
                c()
            t = time.perf_counter()
            for _ in range(inner[name]):
                c()
            ts[name].append((time.perf_counter() - t) / inner[name])
    return {name: statistics.median(v) for name, v in ts.items()}


def bench_size(size: Size, repeats: int, xla_defaults: bool, torch_ok: bool,
               step_repeats: int) -> list[str]:
    model = _model(size)
    option_sets = {"JAX": default_compiler_options()}
    if xla_defaults:
        option_sets["JAX XLA defaults"] = {}
    impls = list(option_sets) + (["PyTorch"] if torch_ok else [])
    totals = {name: dict.fromkeys(PARTS, 0.0) for name in impls}
    rows = []
    for layer in conv_layers(model, size.batch, size.patch_px):
        calls: dict[str, Callable[[], object]] = {}
        ref = None
        for name, options in option_sets.items():
            c, outs = jax_parts(layer, options)
            calls.update({(name, p): c[p] for p in PARTS})
            ref = ref or outs
        if torch_ok:
            c, touts = torch_parts(ref["inputs"])
            for p in PARTS:
                err = np.max(np.abs(touts[p] - ref[p])) / np.max(np.abs(ref[p]))
                if not err < 1e-4:
                    raise RuntimeError(f"{layer.label} {p}: PyTorch and JAX differ by {err:.1e} "
                                       "(relative max); timings would be meaningless.")
            calls.update({("PyTorch", p): c[p] for p in PARTS})
        if not layer.needs_dx:
            calls = {key: c for key, c in calls.items() if key[1] != "dx"}
        med = time_alternating(calls, repeats)
        cells = []
        for name in impls:
            ms = [1e3 * med[(name, p)] if (name, p) in med else 0.0 for p in PARTS]
            for p, v in zip(PARTS, ms, strict=True):
                totals[name][p] += 2 * v  # two networks per consensus step
            cells.append(" / ".join(f"{v:.2f}" if v else "-" for v in ms))
        ratio = ""
        if torch_ok:
            jax_s = sum(v for k, v in med.items() if k[0] == "JAX")
            ratio = f"{jax_s / sum(v for k, v in med.items() if k[0] == 'PyTorch'):.2f}"
        rows.append(f"| {layer.label} | {layer.gflop:.2f} | " + " | ".join(cells) + f" | {ratio} |")
        print(rows[-1], file=sys.stderr, flush=True)

    # The whole step of both implementations, alternating, in the same run.
    data = _data(size)
    runners: dict[str, Callable[[int], None]] = {}
    run, _, params0 = make_jax_runner(model, data)
    run(1)
    runners["JAX"] = run
    if torch_ok:
        trun, _ = make_torch_runner(size, data, params0)
        trun(1)
        runners["PyTorch"] = trun
    step = step_time_alternating(runners, size.steps, step_repeats)
    step_ms = {name: 1e3 * statistics.median(v) for name, v in step.items()}

    head = (f"#### {size.name} (base {size.base_features}, depth {size.depth}, "
            f"{size.patch_px} px, batch {size.batch})")
    table = [
        head, "",
        "ms per call, median; fwd / dx / dk = forward, input gradient, weight gradient of one "
        "network's layer; ratio = JAX / PyTorch over the layer's three calls.", "",
        "| layer | GFLOP per call | " + " | ".join(f"{n} fwd / dx / dk (ms)" for n in impls)
        + " | ratio |",
        "|---|---|" + "---|" * len(impls) + "---|",
        *rows, "",
        "| per consensus step (2 networks) | " + " | ".join(impls) + " |",
        "|---|" + "---|" * len(impls),
    ]
    conv = {n: sum(totals[n].values()) for n in impls}
    for p in PARTS:
        table.append(f"| 3x3 convolutions, {p} (ms) | "
                     + " | ".join(f"{totals[n][p]:.1f}" for n in impls) + " |")
    table.append("| 3x3 convolutions, all (ms) | " + " | ".join(f"{conv[n]:.1f}" for n in impls)
                 + " |")
    table.append("| whole train step (ms) | " + " | ".join(
        f"{step_ms[n]:.1f}" if n in step_ms else "-" for n in impls) + " |")
    table.append("| everything else = step - convolutions (ms) | " + " | ".join(
        f"{step_ms[n] - conv[n]:.1f}" if n in step_ms else "-" for n in impls) + " |")
    return table


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="quick,paper", help="comma list of " + str(list(SIZES)))
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds per layer")
    parser.add_argument("--step_repeats", type=int, default=3,
                        help="alternating rounds of the whole step")
    parser.add_argument("--xla_defaults", action="store_true",
                        help="also time JAX with XLA's default options (YNNPACK on CPU)")
    parser.add_argument("--no_torch", action="store_true", help="time JAX only")
    parser.add_argument("--out", default="", help="append the Markdown tables to this file")
    args = parser.parse_args(argv)
    torch_ok = torch_available(args.no_torch)
    lines = [
        f"### 3x3 convolutions vs the whole train step, {jax.default_backend()}, "
        f"jax {jax.__version__}, {time.strftime('%Y-%m-%d %H:%M')}", "",
        f"JAX options: {default_compiler_options()}"
        + (" and XLA's defaults" if args.xla_defaults else "") + ".", "",
    ]
    for name in args.sizes.split(","):
        if name not in SIZES:
            raise ValueError(f"--sizes: unknown size {name!r}; choose from {list(SIZES)}.")
        lines += bench_size(SIZES[name], args.repeats, args.xla_defaults, torch_ok,
                            args.step_repeats) + [""]
    table = "\n".join(lines) + "\n"
    emit(table, args.out)
    return table


if __name__ == "__main__":
    main()
