"""Seconds per consensus train step: JAX/Flax next to PyTorch, same UNet, loss and optimizer.

One step = both UNets forward and backward on a batch of patch pairs, the loss of Eq. 12
(``Ln + beta_w Lw + beta_r Lr``) and one Adam update of both parameter sets. JAX and PyTorch are
timed in the same process, alternating repeats (A, B, A, B, ...), because the machine's cores are
shared: only the ratio measured side by side is meaningful. Before timing, both implementations
compute the loss from the same weights and batch; a mismatch stops the benchmark.

Run (PyTorch rows need ``pip install torch==2.13.0``, the CPU wheel; about 5 minutes on 2 cores):

    python -m bench.bench_train_step --sizes=quick,paper --repeats=3 --out=bench/RESULTS.md

The JAX variants (``--variants``) put the library's current defaults next to the implementation
before the performance work in the same run. Achieved GFLOP/s come from an analytic count
(``train_step_flops``: forward multiply-adds x 2 FLOPs x 3 for forward + backward, both networks);
the peak is the best large GEMM measured at run time (``jnp.dot``, and ``torch.mm`` on CPU) unless
``--peak_gflops`` states one. On a GPU (``jax.default_backend() == "gpu"``) the JAX rows are
repeated with bfloat16 compute, and the model FLOPs utilisation is given against the measured GEMM
peak of the same dtype; PyTorch is then timed on CUDA when torch sees the GPU (eager and
``torch.compile``, float32 and bfloat16 autocast, cuDNN autotuning on, TF32 off), and each JAX
row gives its ratio to the eager PyTorch step of its dtype.
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

from consensus_jax import methods, train_lib
from consensus_jax.models import UNetConfig
from consensus_jax.xla_options import default_compiler_options

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclasses.dataclass(frozen=True)
class Size:
    """One benchmark setting: UNet width/depth, patch side (px) and batch (patch pairs)."""

    name: str
    base_features: int
    depth: int
    patch_px: int
    batch: int
    steps: int  # steps per timed repeat


# JAX variants: (UNetConfig overrides, compiler_options; None = the library's platform default).
VARIANTS = {
    "default": ({}, None),
    "xla": ({"layer_impl": "xla"}, {}),
    "reshape-xladefaults": ({"layer_impl": "reshape"}, {}),
}
VARIANT_DOC = {
    "default": "library defaults (layer_impl='auto', xla_options.default_compiler_options())",
    "xla": "before the performance work: flax ConvTranspose + max_pool, XLA's default options",
    "reshape-xladefaults": "layer_impl='reshape' with XLA's default options (YNNPACK convs)",
}

SIZES = {
    "quick": Size("quick", 16, 3, 64, 16, steps=5),
    "paper": Size("paper", 32, 4, 96, 40, steps=1),
}
BETA_W, BETA_R = 5e-6, 0.5  # the paper's CT values


def unet_forward_macs(model: UNetConfig, batch: int, height: int, width: int) -> int:
    """Multiply-adds of one UNet forward pass on [batch, height, width, in_channels].

    3x3 convolutions cost ``9 cin cout`` per output pixel, the 2x2 stride-2 transposed
    convolution ``cin cout`` per output pixel (each output pixel sees one input pixel through one
    tap), the 1x1 head ``cin cout``. Biases, ReLU, pooling and the residual are not counted. All
    9 taps count at the borders too (zero padding): XLA's ``cost_analysis``, which skips padded
    taps, gives 5.3% (quick) and 6.0% (paper) fewer forward FLOPs.
    """
    macs, cin = 0, model.in_channels
    for level in range(model.depth + 1):
        f = model.base_features * 2**level
        px = (height >> level) * (width >> level)
        macs += px * 9 * (cin * f + f * f)
        cin = f
    for level in reversed(range(model.depth)):
        f = model.base_features * 2**level
        px = (height >> level) * (width >> level)
        macs += px * cin * f + px * 9 * (2 * f * f + f * f)
        cin = f
    return batch * (macs + height * width * cin * model.out_channels)


def train_step_flops(model: UNetConfig, batch: int, height: int, width: int,
                     networks: int = 2) -> int:
    """FLOPs of one train step: 2 FLOPs per multiply-add, x3 for forward + backward
    (input and weight gradients), times the number of networks."""
    return 3 * 2 * unet_forward_macs(model, batch, height, width) * networks


def _model(size: Size, **overrides) -> UNetConfig:
    return UNetConfig(base_features=size.base_features, depth=size.depth, **overrides)


def _data(size: Size, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (size.batch, size.patch_px, size.patch_px, 1)
    clean = rng.normal(size=shape).astype(np.float32)
    return {
        "x1": clean + 0.3 * rng.normal(size=shape).astype(np.float32),
        "x2": clean + 0.3 * rng.normal(size=shape).astype(np.float32),
        "x_est": clean + 0.2 * rng.normal(size=shape).astype(np.float32),
    }


def make_jax_runner(model: UNetConfig, data: dict[str, np.ndarray], layout: str = "separate",
                    seed: int = 0, compiler_options: dict | None = None
                    ) -> tuple[Callable[[int], None], Callable[[], float], object]:
    """``run(n)`` does n train steps and blocks; ``loss()`` is Eq. 12 at the current params.

    ``compiler_options=None`` keeps ``make_train_step``'s platform default.
    """
    method = methods.make("consensus", model, layout, beta_w=BETA_W, beta_r=BETA_R)
    opt = train_lib.make_optimizer(1e-4)
    state = train_lib.create_train_state(method, opt, jax.random.PRNGKey(seed))
    params0 = jax.tree_util.tree_map(np.asarray, method.split_params(state.params))
    jit_kwargs = {} if compiler_options is None else {"compiler_options": compiler_options}
    step = train_lib.make_train_step(method, opt, **jit_kwargs)
    batch = {k: jnp.asarray(v) for k, v in data.items()}
    rng = jax.random.PRNGKey(1)
    holder = {"state": state}

    def run(n: int) -> None:
        s = holder["state"]
        for _ in range(n):
            s, metrics = step(s, batch, rng)
        jax.block_until_ready((s, metrics))
        holder["state"] = s

    loss_jit = jax.jit(lambda p: method.loss(p, batch)[0])

    def loss() -> float:
        return float(loss_jit(holder["state"].params))

    return run, loss, params0


def make_torch_runner(size: Size, data: dict[str, np.ndarray], params: list[object],
                      device: str = "cpu", compiled: bool = False, bf16: bool = False
                      ) -> tuple[Callable[[int], None], Callable[[], float]]:
    """The PyTorch twin (channels_last), initialised with the JAX networks' weights.

    ``device``: "cpu" or "cuda" (cuDNN autotuning on, TF32 off so that float32 is float32);
    ``compiled``: both networks through ``torch.compile``; ``bf16``: the step under bfloat16
    autocast (float32 parameters and optimizer state, as JAX's ``model.dtype="bfloat16"``).
    ``run(n)`` does n steps and waits for the device.
    """
    import contextlib

    import torch

    from bench.torch_unet import ConsensusStep, TorchUNet, consensus_total_loss, load_flax_params

    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    nets = []
    for p in params:
        net = TorchUNet(size.base_features, size.depth)
        load_flax_params(net, p)
        nets.append(net.to(device=device, memory_format=torch.channels_last))
    tensors = {k: torch.from_numpy(v.transpose(0, 3, 1, 2).copy()).to(device).contiguous(
        memory_format=torch.channels_last) for k, v in data.items()}
    # The optimizer holds the parameters of the eager modules, which the compiled ones share.
    step = ConsensusStep(nets[0], nets[1], BETA_W, BETA_R, learning_rate=1e-4)
    if compiled:
        step.net1, step.net2 = torch.compile(nets[0]), torch.compile(nets[1])

    def precision():
        return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def run(n: int) -> None:
        with precision():
            for _ in range(n):
                step(tensors["x1"], tensors["x2"], tensors["x_est"])
        if device == "cuda":
            torch.cuda.synchronize()

    def loss() -> float:
        with torch.no_grad(), precision():
            return float(consensus_total_loss(nets[0], nets[1], tensors["x1"], tensors["x2"],
                                              tensors["x_est"], BETA_W, BETA_R))

    return run, loss


def torch_gpu_runners(size: Size, data: dict[str, np.ndarray], params: list[object],
                      dtype: str, jax_loss: float) -> dict[str, Callable[[int], None]]:
    """The PyTorch twin on CUDA, eager and ``torch.compile`` (when it works), in ``dtype``
    (bfloat16: autocast). The eager float32 twin's loss at the shared initial weights must equal
    JAX's (``jax_loss``, same weights and batch) to 1e-3 before anything is timed."""
    runners = {}
    for compiled in (False, True):
        name = f"PyTorch CUDA {'compile' if compiled else 'eager'} {dtype}"
        try:
            run, loss = make_torch_runner(size, data, params, "cuda", compiled,
                                          bf16=dtype == "bfloat16")
            torch_loss = loss() if dtype == "float32" and not compiled else jax_loss
            run(2)  # compiles, autotunes
        except Exception as e:  # noqa: BLE001 - torch.compile fails in many ways; keep eager
            print(f"# {size.name} {name}: skipped ({type(e).__name__}: {str(e)[:200]})",
                  file=sys.stderr)
            continue
        if abs(torch_loss - jax_loss) > 1e-3 * abs(jax_loss):
            raise RuntimeError(f"{name}: loss {torch_loss} vs JAX {jax_loss} at the same weights: "
                               "the implementations differ, timings are meaningless.")
        runners[name] = run
    return runners


def gemm_peak_gflops(dtype: str = "float32", n: int = 2048, reps: int = 10) -> float:
    """Best-of-5 GFLOP/s of an [n, n] x [n, n] jnp.dot: the measured peak of this backend."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            out = f(a, a)
        out.block_until_ready()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def torch_gemm_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    import torch

    a = torch.ones(n, n)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            a @ a
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def time_alternating(runners: dict[str, Callable[[int], None]], steps: int, repeats: int
                     ) -> dict[str, list[float]]:
    """Seconds per step of each runner over ``repeats`` rounds, runners alternating per round.

    Every timed block is preceded by one untimed step of the same runner, so that each block
    measures the steady state of consecutive steps, as in training. Without it the first step
    after the other implementation's block pays for memory the other one released and for its
    spinning threads: at the paper size the first JAX step after PyTorch's took 4.3-4.6 s against
    2.7-2.8 s for the next ones (bench/PERF_LOG.md, 2026-11-25 07:20).
    """
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            run(1)  # untimed: see the docstring
            t = time.perf_counter()
            run(steps)
            times[name].append((time.perf_counter() - t) / steps)
    return times


def _row(size: Size, name: str, ts: list[float], flops: int, peak: float,
         ref: list[float] | None) -> str:
    med = statistics.median(ts)
    gflops = flops / med / 1e9
    ratio = f"{med / statistics.median(ref):.2f} ({min(ts) / min(ref):.2f})" if ref else ""
    return (f"| {size.name} ({size.base_features}/{size.depth}/{size.patch_px}px/b{size.batch}) "
            f"| {name} | {med:.3f} ({min(ts):.3f}-{max(ts):.3f}) | {size.batch / med:.1f} "
            f"| {gflops:.1f} | {100 * gflops / peak:.0f}% | {ratio} |")


def bench_size(size: Size, repeats: int, variants: list[str], stacked: bool,
               peak: float, torch_ok: bool, dtypes: list[str], torch_gpu: bool = False
               ) -> list[str]:
    """Table rows of one size: the JAX variants in ``dtypes``, and the PyTorch twin on CPU
    (``torch_ok``, float32) or on CUDA (``torch_gpu``: eager and compiled, each dtype); JAX rows
    give their ratio to the first PyTorch row of their dtype."""
    data = _data(size)
    flops = train_step_flops(_model(size), size.batch, size.patch_px, size.patch_px)
    runners: dict[str, Callable[[int], None]] = {}
    torch_run = None
    for dtype in dtypes:
        for variant in variants:
            overrides, options = VARIANTS[variant]
            name = f"JAX separate {variant} {dtype}"
            run, loss, params0 = make_jax_runner(_model(size, dtype=dtype, **overrides), data,
                                                 compiler_options=options)
            if torch_gpu and not any(k.startswith("PyTorch") and k.endswith(dtype)
                                     for k in runners):
                runners.update(torch_gpu_runners(size, data, params0, dtype,
                                                 jax_loss=float(loss())))
            if torch_ok and torch_run is None:
                torch_run, torch_loss = make_torch_runner(size, data, params0)
                ref_loss = torch_loss()
            if torch_ok and dtype == "float32":
                jl = loss()
                if abs(jl - ref_loss) > 1e-4 * abs(ref_loss):
                    raise RuntimeError(f"{name}: JAX loss {jl} != PyTorch loss {ref_loss}; the "
                                       "two implementations differ, timings are meaningless.")
            t = time.perf_counter()
            run(1)  # compile
            print(f"# {size.name} {name}: compile + first step {time.perf_counter() - t:.1f} s",
                  file=sys.stderr)
            runners[name] = run
    if torch_run is not None:
        torch_run(1)  # warm-up (oneDNN primitive creation)
        runners["PyTorch channels_last float32"] = torch_run
    times = time_alternating(runners, size.steps, repeats)

    def reference(name: str) -> list[float] | None:
        """The PyTorch times a JAX row is compared with: the first PyTorch row of its dtype."""
        if not name.startswith("JAX"):
            return None
        dtype = name.rsplit(" ", 1)[-1]
        return next((ts for k, ts in times.items()
                     if k.startswith("PyTorch") and k.endswith(dtype)), None)

    rows = [_row(size, name, ts, flops, peak, reference(name)) for name, ts in times.items()]
    if stacked:
        run_sep, _, _ = make_jax_runner(_model(size), data, "separate")
        run_stk, _, _ = make_jax_runner(_model(size), data, "stacked")
        run_sep(1)
        run_stk(1)
        t2 = time_alternating({"JAX separate (ref)": run_sep, "JAX stacked+vmap": run_stk},
                              1, 2)
        rows.append(_row(size, "JAX stacked+vmap (vs separate)", t2["JAX stacked+vmap"],
                         flops, peak, t2["JAX separate (ref)"]))
    return rows


def torch_available(no_torch: bool) -> bool:
    """Whether the PyTorch reference can run (the bench extra installed, not turned off)."""
    if no_torch:
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        print("# torch not installed: pip install torch==2.13.0 (CPU wheel); timing JAX only",
              file=sys.stderr)
        return False
    return True


def emit(table: str, out: str) -> None:
    """Prints the Markdown table and appends it to ``out`` when given."""
    print(table)
    if out:
        with open(out, "a") as f:
            f.write("\n" + table)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="quick,paper", help="comma list of " + str(list(SIZES)))
    parser.add_argument("--repeats", type=int, default=3, help="alternating A/B rounds")
    parser.add_argument("--variants", default="default,xla",
                        help="comma list of JAX variants: " + "; ".join(
                            f"{k} = {v}" for k, v in VARIANT_DOC.items()))
    parser.add_argument("--no_stacked", action="store_true",
                        help="skip the stacked+vmap vs separate comparison")
    parser.add_argument("--stacked_sizes", default="quick",
                        help="sizes with the stacked+vmap vs separate comparison (paper: ~100 s "
                             "per stacked step on 2 CPU cores)")
    parser.add_argument("--no_torch", action="store_true", help="time JAX only")
    parser.add_argument("--peak_gflops", type=float, default=0.0,
                        help="float32 peak to report against instead of the measured GEMM")
    parser.add_argument("--out", default="", help="append the Markdown table to this file")
    args = parser.parse_args(argv)

    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"--variants: unknown variant {v!r}; choose from {list(VARIANTS)}.")
    backend = jax.default_backend()
    torch_ok = torch_available(args.no_torch)
    torch_gpu = False
    if torch_ok and backend != "cpu":
        # On a GPU the reference is PyTorch on CUDA (eager and compiled), when torch sees one.
        import torch

        torch_ok, torch_gpu = False, backend == "gpu" and torch.cuda.is_available()
        if not torch_gpu:
            print("# torch sees no GPU: timing JAX only", file=sys.stderr)
    dtypes = ["float32", "bfloat16"] if backend == "gpu" else ["float32"]
    # A GPU needs a large GEMM to reach its peak; 2048^3 already saturates 2 CPU cores.
    peaks = {d: gemm_peak_gflops(d, n=8192 if backend == "gpu" else 2048) for d in dtypes}
    torch_peak = torch_gemm_peak_gflops() if torch_ok else 0.0
    if torch_peak > peaks["float32"]:
        peaks["float32"] = torch_peak
    if args.peak_gflops:
        peaks["float32"] = args.peak_gflops
    lines = [
        f"### Consensus train step, {backend} ({jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} host cores), jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; train-step compiler_options "
        f"{default_compiler_options()}. Peak = "
        + ("--peak_gflops" if args.peak_gflops else "best measured GEMM (jnp.dot"
           + (", torch.mm" if torch_ok else "") + ")") + ": "
        + ", ".join(f"{d} {p:.0f} GFLOP/s" for d, p in peaks.items())
        + ". s/step: median (min-max) over alternating repeats; patches/s = patch pairs per s; "
        "ratio = JAX / PyTorch, medians (and minima) of the same run. The cores may be shared: "
        "compare only ratios measured side by side.",
        "",
        "Variants: " + "; ".join(f"{k} = {VARIANT_DOC[k]}" for k in variants) + ".",
        "",
        "| size (base/depth/patch/batch) | implementation | s/step | patches/s | GFLOP/s "
        "| % peak | ratio JAX/torch median (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.sizes.split(","):
        if name not in SIZES:
            raise ValueError(f"--sizes: unknown size {name!r}; choose from {list(SIZES)}.")
        size = SIZES[name]
        for dtype in dtypes:
            rows = bench_size(size, args.repeats, variants,
                              stacked=(name in args.stacked_sizes.split(",")
                                       and not args.no_stacked
                                       and dtype == dtypes[0]),
                              peak=peaks[dtype], torch_ok=torch_ok and dtype == "float32",
                              dtypes=[dtype], torch_gpu=torch_gpu)
            lines.extend(rows)
            print("\n".join(rows), file=sys.stderr)
    table = "\n".join(lines) + "\n"
    emit(table, args.out)
    return table


if __name__ == "__main__":
    main()
