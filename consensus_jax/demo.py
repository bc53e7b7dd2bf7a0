"""Interim demo: trains the consensus pair on an in-memory synthetic split set with the real step.

Replaced by the CT pipeline (prepare -> train -> evaluate) once it lands.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from consensus_jax import patches, synthetic, train_lib
from consensus_jax.models import UNetConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="results/demo")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    train = {k: jnp.asarray(v) for k, v in synthetic.noisy_pairs(32, 64, 0.5, seed=0).items()}
    test = synthetic.noisy_pairs(8, 64, 0.5, seed=1)
    print(f"{'method':>12} {'step':>5} {'loss':>10}   test RMSE vs clean (noisy half: "
          f"{np.sqrt(np.mean((test['x1'] - test['x_ref']) ** 2)):.3f})")
    for kind in ("noise2clean", "noise2noise", "consensus"):
        method = train_lib.Method(kind, UNetConfig(16, 2), beta_w=5e-6,
                                  beta_r=0.5 if kind == "consensus" else 0.0,
                                  noise2clean_input="x1")
        opt = train_lib.make_optimizer(2e-3)
        state = train_lib.create_train_state(method, opt, jax.random.PRNGKey(0))
        step = train_lib.make_train_step(method, opt)
        images = {k: train[k] for k in method.input_keys()}
        key = jax.random.PRNGKey(1)
        for i in range(args.steps):
            k = jax.random.fold_in(key, i)
            idx = jax.random.randint(k, (16,), 0, 32)
            batch = patches.random_patch_batch(k, images, idx, 32, augment=True)
            state, metrics = step(state, batch, k)
            if (i + 1) % 100 == 0:
                train_lib.check_finite(metrics, i + 1)
                print(f"{kind:>12} {i + 1:5d} {float(metrics['total']):10.3f}")
        z = train_lib.denoise(method, state.params, jnp.asarray(test["x1"]),
                              jnp.asarray(test["x2"]))
        rmse = np.sqrt(np.mean((np.asarray(z) - test["x_ref"]) ** 2))
        print(f"{kind:>12} test RMSE vs clean: {rmse:.3f}")


if __name__ == "__main__":
    main()
