"""Trained runs: which checkpoint, its parameters, and the denoised images of each table column.

Shared by training (a distilled network's teacher), evaluation and export, which never import
each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from consensus_jax import methods, train_lib
from consensus_jax import workdir as wd
from consensus_jax.errors import ConfigError, MissingRunError, RunError
from consensus_jax.methods import Method


def predict(method: Method, params: Any, images: Mapping[str, np.ndarray],
            batch_size: int = 4) -> dict[str, np.ndarray]:
    """Denoised whole test slices [S, H, W, C] for each table column the method fills
    (``method.columns``), from the images it declares (``Method.predict_slices``)."""
    return method.predict_slices(params, images, batch_size)


def predict_spread(method: Method, params: Any, images: Mapping[str, np.ndarray],
                   batch_size: int = 4) -> np.ndarray | None:
    """The spread of the method's networks on whole slices [S, H, W, C]
    (``Method.spread_slices``), or None for a method without one."""
    return method.spread_slices(params, images, batch_size)


def resolve_checkpoint(workdir: str | Path, checkpoint: str | int = "best"
                       ) -> tuple[Path, int, str]:
    """(checkpoint folder, step, how it was chosen) of a run.

    ``checkpoint``: "best" (lowest validation loss; the latest step when the run has no
    validation checkpoint, e.g. one trained before validation existed), "latest", or a step.
    """
    workdir = Path(workdir)
    latest = wd.checkpoint_manager(workdir, keep=1_000_000)
    steps = latest.all_steps()
    latest.close()
    if checkpoint == "best" and (workdir / wd.BEST).is_dir():
        try:
            best = wd.best_manager(workdir)
            step = best.best_step()
            best.close()
        except Exception as e:  # noqa: BLE001 - a damaged record of the best step
            warnings.warn(f"{workdir / wd.BEST}: the best step cannot be read ({type(e).__name__}: "
                          f"{str(e)[:200]}); using the latest checkpoint instead.", stacklevel=2)
            step = None
        if step is not None:
            return workdir / wd.BEST, int(step), "best validation loss"
    if not steps:
        raise MissingRunError(f"No checkpoint in {workdir / wd.CHECKPOINTS}: train it first "
                              f"(`python train.py --workdir={workdir} ...`).")
    if checkpoint in ("best", "latest"):
        why = "latest" if checkpoint == "latest" else "latest; the run has no validation checkpoint"
        return workdir / wd.CHECKPOINTS, max(steps), why
    try:
        step = int(checkpoint)
    except ValueError:
        raise ConfigError(f"checkpoint must be 'best', 'latest' or a step number, got "
                          f"{checkpoint!r}.") from None
    if step not in steps:
        raise RunError(f"{workdir / wd.CHECKPOINTS} has no checkpoint of step {step}; it has "
                       f"{sorted(steps)}.")
    return workdir / wd.CHECKPOINTS, step, "requested"


def load_params(workdir: str | Path, method: Method, config: ml_collections.ConfigDict,
                checkpoint: str | int = "best") -> tuple[Any, int, str]:
    """The parameters of one of a run's checkpoints (``resolve_checkpoint``), its step and how
    it was chosen, replicated over this machine's devices whatever the topology the run was saved
    from.

    For "best" and "latest", a checkpoint that fails to restore (a truncated file, a full disk)
    is skipped with a warning and the newest intact kept step is used instead (its reason says
    so); a requested step that fails raises RunError. Nothing in the run is changed.
    """
    directory, step, why = resolve_checkpoint(workdir, checkpoint)
    params = jax.eval_shape(lambda: method.init_params(jax.random.PRNGKey(0)))

    def opt_state_shapes():
        optimizer = train_lib.make_optimizer(1.0, config.optim.schedule, total_steps=1)
        return jax.eval_shape(optimizer.init, params)

    replicated = NamedSharding(train_lib.make_mesh(local=True), P())
    candidates = [(directory, step, why)]
    if checkpoint in ("best", "latest"):
        kept = wd.checkpoint_manager(Path(workdir), keep=1_000_000)
        candidates += [(Path(workdir) / wd.CHECKPOINTS, s, "") for s in
                       sorted(kept.all_steps(), reverse=True)
                       if (Path(workdir) / wd.CHECKPOINTS, s) != (directory, step)]
        kept.close()
    restored, chosen, failed = wd.first_restorable(
        candidates, lambda c: wd.restore_params(c[0], c[1], params, replicated, opt_state_shapes))
    failures = "; ".join(f"{folder / str(s)} ({wd.brief(e)})" for (folder, s, _), e in failed)
    if chosen is None:
        raise RunError(_why_none_restores(Path(workdir), failed, params)) from failed[0][1]
    _, s, reason = chosen
    if failed:
        reason = reason or f"step {step} ({why}) unreadable; the newest intact kept step"
        warnings.warn(f"{workdir}: could not restore {failures}; using step {s} instead.",
                      stacklevel=2)
    return restored, s, reason


def _why_none_restores(workdir: Path, failed: list[tuple[tuple[Path, int, str], Exception]],
                       params: Any) -> str:
    """The message of a run none of whose checkpoints restores: the stored parameters have
    other shapes than the run's own config makes (the model code changed since), or the
    checkpoints are damaged (each with the file or folder its error names)."""
    (folder, step, _), _ = failed[0]
    mismatch = wd.shape_mismatch(folder, step, params)
    if mismatch:
        shown = "\n".join(f"  {line}" for line in mismatch[:8])
        more = f"\n  ... and {len(mismatch) - 8} more" if len(mismatch) > 8 else ""
        return (f"{workdir}: no checkpoint restores: {folder / str(step)} stores parameters of "
                f"other shapes than the run's config.json makes:\n{shown}{more}\nThe model code "
                "changed since the run was trained: evaluate it with the version that trained "
                "it, or train it again.")
    each = "; ".join(f"{wd.damaged_file(e, f / str(s))} ({wd.short_error(e)})"
                     for (f, s, _), e in failed)
    known = "the stored shapes match the run's config" if mismatch == [] else \
        "not even the stored shapes can be read"
    return (f"{workdir}: no checkpoint restores; the checkpoints are damaged (a truncated or "
            f"missing file; {known}): {each}. Restore them "
            "from a backup, or train the run again (--verbose shows the whole error).")


def load_run(workdir: str | Path, checkpoint: str | int = "best"
             ) -> tuple[Method, Any, int, ml_collections.ConfigDict]:
    """(method, params, step, config) of a finished or partial training run; ``checkpoint``:
    "best" (default), "latest" or a step (``resolve_checkpoint``)."""
    config = wd.load_config(workdir)
    method = methods.from_config(config)
    params, step, _ = load_params(workdir, method, config, checkpoint)
    return method, params, step, config
