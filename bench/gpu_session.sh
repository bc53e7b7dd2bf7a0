#!/usr/bin/env bash
# The GPU measurements of the throughput work, in one go (planned for about 10 minutes on one
# H200), written to OUT_DIR (default: bench_gpu_out):
#
#   bash bench/gpu_session.sh "$OUT"
#
# 1. loop efficiency of `experiment.fit` against the isolated step, quick and paper sizes, for
#    1, 10 and 100 steps per dispatch (bench_loop): the choice of the GPU default of
#    train.steps_per_dispatch, and the 90% target;
# 2. the consensus train step in float32 and bfloat16, JAX next to PyTorch on CUDA (eager and
#    torch.compile), with the model-FLOPs utilisation against the measured GEMM peak
#    (bench_train_step);
# 3. seconds per denoised 512 x 512 slice of exported models (bench_denoise).
#
# Needs no TensorFlow (in-memory data only) and no tensorboard. Needs, beside jax (CUDA), flax,
# optax, orbax and torch: ml_collections, absl-py and tqdm; a missing one is named before
# anything runs. Copy the tables into bench/RESULTS.md with the machine named.
set -euo pipefail
out=${1:-bench_gpu_out}
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=2
python - <<'EOF'
import importlib, sys
missing = [m for m in ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl",
                       "tqdm", "torch") if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)}")
import jax
print("devices:", jax.devices(), file=sys.stderr)
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/gpu.txt" || true
python -m bench.bench_loop --sizes=quick,paper --dispatch=1,10,100 --repeats=1 \
    --out="$out/loop.md" 2>&1 | tee "$out/loop.log"
python -m bench.bench_train_step --sizes=quick,paper --repeats=3 --variants=default \
    --no_stacked --out="$out/train_step.md" 2>&1 | tee "$out/train_step.log"
python -m bench.bench_denoise --sizes=quick,paper --repeats=3 2>&1 | tee "$out/denoise.log"
