"""Run folders: the stored config, the checkpoints, and files written so that none is ever half
written.

A training workdir holds ``config.json`` (the flattened experiment config), ``checkpoints/``
(orbax), ``metrics.jsonl`` and ``tensorboard/``. Both the trainer (``experiment``) and the
evaluator (``evaluation``) read run folders through this module; neither imports the other.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from consensus_jax.errors import MissingRunError, RunError


def keep_previous(path: Path) -> Path | None:
    """Renames an existing ``path`` to the first free ``<stem>.<n><suffix>``; returns the new
    name (None when ``path`` did not exist)."""
    if not path.exists():
        return None
    n = 1
    while path.with_name(f"{path.stem}.{n}{path.suffix}").exists():
        n += 1
    kept = path.with_name(f"{path.stem}.{n}{path.suffix}")
    os.replace(path, kept)
    return kept


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", keep: bool = False) -> Iterator[IO]:
    """Opens ``<path>.tmp`` for writing and renames it to ``path`` only when the block succeeds.

    A failure inside the block removes the temporary file and leaves ``path`` as it was.
    ``keep=True`` first moves an existing ``path`` to a numbered name (``keep_previous``), so an
    earlier result is never overwritten. ``mode``: "w" (text) or "wb" (bytes).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open(mode, **({"newline": ""} if "b" not in mode else {})) as f:
            yield f
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if keep:
        keep_previous(path)
    os.replace(tmp, path)


def atomic_write(path: str | Path, data: str | bytes, keep: bool = False) -> Path:
    """Writes ``data`` (text or bytes) to ``path`` through ``atomic_open``; returns ``path``."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", keep=keep) as f:
        f.write(data)
    return Path(path)


# --- the stored config -------------------------------------------------------------------------

#: Config keys added after runs were first stored, with the value that older runs used: a
#: stored config without the key reads as (and compares equal to) one that gives it this value.
ADDED_KEY_DEFAULTS = MappingProxyType({
    "optim.schedule": "constant",
    "data.validation_split": "validation", "train.eval_every_steps": 0,
    "train.early_stop_patience": 0, "train.overfit_warning_evals": 3,
    "train.steps_per_dispatch": 0, "loss.distill_input": "x_est", "loss.teacher": "",
    "data.num_splits": 2,
})

#: Config keys that runs stored before they were removed; ignored when reading a stored config.
REMOVED_KEYS = frozenset({"train.debug_exit_at_step"})

#: Config keys that do not change the trained parameters; a workdir may be resumed with others.
#: (model.layer_impl only picks how the same layers are computed.)
RUNTIME_KEYS = frozenset({
    "model.layer_impl",
    "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.tensorboard", "train.progress", "data.data_dir", "eval.batch_size",
    "train.eval_every_steps", "train.overfit_warning_evals", "data.validation_split",
    "train.steps_per_dispatch",
})


def flatten_config(config: ml_collections.ConfigDict | Mapping[str, Any],
                   prefix: str = "") -> dict[str, Any]:
    """{"group.key": value} of a (nested) ConfigDict or dict."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, name + "."))
        else:
            out[name] = v
    return out


def _read_stored(path: Path) -> dict[str, Any]:
    """A stored config.json, flattened, in today's keys (``ADDED_KEY_DEFAULTS``,
    ``REMOVED_KEYS``)."""
    stored = {k: v for k, v in json.loads(path.read_text()).items() if k not in REMOVED_KEYS}
    return {**ADDED_KEY_DEFAULTS, **stored}


def check_workdir_config(workdir: Path, config: ml_collections.ConfigDict,
                         allow_config_change: bool, write: bool = True) -> bool:
    """Refuses a config that differs from the one stored in a used workdir (unless
    ``allow_config_change``); returns whether config.json needs (re)writing.

    ``write=True`` also stores it now. ``experiment.fit`` passes False and calls ``store_config``
    only once the run has restored or initialised and has steps left to train, so that a run
    that fails to start, or a finished run, keeps the config it was trained with.
    """
    path = workdir / "config.json"
    current = flatten_config(config)
    if path.exists():
        stored = _read_stored(path)
        diff = {k: (stored.get(k), current.get(k)) for k in sorted(set(stored) | set(current))
                if k not in RUNTIME_KEYS and stored.get(k) != current.get(k)}
        if diff and not allow_config_change:
            lines = "\n".join(f"  {k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise RunError(
                f"{workdir} holds a run with a different config:\n{lines}\nUse a new --workdir, "
                "or pass --allow_config_change to continue this run with the new values."
            )
        if not diff:
            return False
    if write:
        store_config(workdir, config)
    return True


#: One JSON line per config change of a run (``--allow_config_change``): the step from which
#: the new values apply, the date and each changed key's old and new value.
CONFIG_HISTORY = "config_history.jsonl"


def store_config(workdir: Path, config: ml_collections.ConfigDict, step: int = 0) -> None:
    """Writes ``config`` as the run's config.json (atomically). When it replaces a different
    stored config, the change and ``step`` (the first step trained with the new values) are
    appended to config_history.jsonl first."""
    workdir.mkdir(parents=True, exist_ok=True)
    path, current = workdir / "config.json", flatten_config(config)
    if path.exists():
        stored = _read_stored(path)
        diff = {k: [stored.get(k), current.get(k)] for k in sorted(set(stored) | set(current))
                if stored.get(k) != current.get(k)}
        if diff:
            history = workdir / CONFIG_HISTORY
            old = history.read_text() if history.exists() else ""
            record = {"step": int(step), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "changed": diff}
            atomic_write(history, old + json.dumps(record, default=str) + "\n")
    atomic_write(path, json.dumps(current, indent=2, sort_keys=True))


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config stored beside a run's checkpoints, as a ConfigDict."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise MissingRunError(f"{path} not found: {workdir} is not a training workdir (train.py "
                              "writes config.json there when it starts).")
    nested: dict[str, Any] = {}
    for key, value in _read_stored(path).items():
        node = nested
        *groups, leaf = key.split(".")
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = value
    return ml_collections.ConfigDict(nested)


# --- checkpoints -------------------------------------------------------------------------------
# Each step is saved as two orbax items, ``params`` and ``opt_state``, so evaluation and export
# restore the parameters alone. Runs saved before that hold one unnamed item (``default``, the
# whole TrainState); they are still restored, and resumed runs save new steps in the new layout.

CHECKPOINTS = "checkpoints"
#: The checkpoint with the lowest validation loss (parameters only), kept beside the latest.
BEST = "best"


def checkpoint_manager(workdir: Path, keep: int, subdir: str = CHECKPOINTS,
                       **options: Any) -> ocp.CheckpointManager:
    # Its own barrier names: on several processes, the latest and the best checkpoint of the
    # same step are saved at once and must not wait at each other's barriers.
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=subdir),
        **options)
    return ocp.CheckpointManager((Path(workdir) / subdir).absolute(), options=opts)


def best_manager(workdir: Path) -> ocp.CheckpointManager:
    """The manager of ``<workdir>/best``: one checkpoint, the lowest ``val_loss`` metric."""
    return checkpoint_manager(workdir, 1, subdir=BEST, best_fn=lambda m: m["val_loss"],
                              best_mode="min", keep_checkpoints_without_metrics=False)


def save_state(mngr: ocp.CheckpointManager, step: int, state: Any, **kwargs: Any) -> None:
    """Saves ``state`` (a TrainState) at ``step`` as the items ``params`` and ``opt_state``."""
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                                            opt_state=ocp.args.StandardSave(state.opt_state)),
              **kwargs)


def _is_legacy(directory: Path, step: int) -> bool:
    return (directory / str(step) / "default").is_dir()


def _abstract(tree: Any, sharding: Any | None) -> Any:
    def one(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or getattr(x, "sharding",
                                                                                   None))
    return jax.tree_util.tree_map(one, tree)


def restore_state(directory: Path, step: int, target: Any) -> Any:
    """The TrainState of ``step`` in the checkpoint folder ``directory``, shaped like ``target``
    (a TrainState of arrays or ShapeDtypeStructs, whose shardings are used)."""
    mngr = ocp.CheckpointManager(directory.absolute())
    try:
        if _is_legacy(directory, step):
            state = mngr.restore(step, args=ocp.args.StandardRestore(_abstract(target, None)))
        else:
            items = mngr.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(target.params, None)),
                opt_state=ocp.args.StandardRestore(_abstract(target.opt_state, None))))
            state = target.replace(step=jnp.asarray(step, jnp.int32), params=items.params,
                                   opt_state=items.opt_state)
    finally:
        mngr.close()
    return state


def brief(err: Exception) -> str:
    """``Type: first line`` of an exception (orbax's run to dozens of lines)."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"


def first_restorable(candidates: Sequence[Any], restore: Callable[[Any], Any]
                     ) -> tuple[Any, Any, list[tuple[Any, Exception]]]:
    """(value, candidate, failures before it) for the first of ``candidates`` (newest first)
    that ``restore`` reads; (None, None, failures) when none does. Damage (a truncated file, a
    full disk) shows up as many exception types, so any exception counts as unreadable."""
    failed: list[tuple[Any, Exception]] = []
    for candidate in candidates:
        try:
            return restore(candidate), candidate, failed
        except Exception as e:  # noqa: BLE001 - see the docstring
            failed.append((candidate, e))
    return None, None, failed


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``"a/b/c"`` -> shape of every array of a pytree: arrays, ShapeDtypeStructs or the
    ArrayMetadata of a checkpoint's stored tree."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves
            if hasattr(leaf, "shape")}


def _stored_tree(item_dir: Path) -> Any:
    """The stored tree of one orbax item (its ``_METADATA``: names, shapes and dtypes, no
    array read)."""
    metadata = ocp.StandardCheckpointHandler().metadata(item_dir.absolute())
    return getattr(metadata, "tree", metadata)


def shape_mismatch(directory: Path, step: int, params: Any, opt_state: Any = None
                   ) -> list[str] | None:
    """How the shapes stored in checkpoint ``step`` of ``directory`` differ from ``params``'
    (and ``opt_state``'s, when given): one line per parameter (``name: stored (8,), this run
    (4,)``, or missing on either side), [] when they agree, None when the stored metadata
    cannot be read (the checkpoint is damaged).

    Optimizer states are compared by their list of shapes alone: their stored names need not
    match the names of optax's state classes.
    """
    step_dir = directory / str(step)
    try:
        if _is_legacy(directory, step):
            stored = _stored_tree(step_dir / "default")
            stored_params, stored_opt = stored["params"], stored.get("opt_state")
        else:
            stored_params = _stored_tree(step_dir / "params")
            stored_opt = _stored_tree(step_dir / "opt_state") if opt_state is not None and \
                (step_dir / "opt_state").is_dir() else None
        have = leaf_shapes(stored_params)
        stored_opt_shapes = sorted(leaf_shapes(stored_opt).values()) \
            if stored_opt is not None else None
    except Exception:  # noqa: BLE001 - an unreadable or garbled _METADATA: damage
        return None
    want = leaf_shapes(params)
    lines = [f"{name}: stored {have.get(name, 'nothing')}, this run "
             f"{want.get(name, 'nothing')}"
             for name in sorted(set(have) | set(want)) if have.get(name) != want.get(name)]
    if opt_state is not None and stored_opt_shapes is not None:
        want_opt = sorted(leaf_shapes(opt_state).values())
        if stored_opt_shapes != want_opt:
            lines.append(f"optimizer state: stored {len(stored_opt_shapes)} arrays, this run's "
                         f"optimizer {len(want_opt)}" + (" of other shapes" if len(want_opt) ==
                                                         len(stored_opt_shapes) else ""))
    return lines


def damaged_file(err: BaseException, step_dir: Path) -> Path:
    """The file under ``step_dir`` that an error of reading checkpoint ``step_dir`` names (the
    first path in its message or its causes' that lies there), else ``step_dir`` itself."""
    root = str(step_dir.absolute())
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        for match in re.finditer(r"(?:file://)?(/[^\s'\",;:)\]]+)", str(cause)):
            if match.group(1).startswith(root):
                return Path(match.group(1))
        cause = cause.__cause__ or cause.__context__
    return step_dir


def short_error(err: BaseException) -> str:
    """``brief`` without TensorStore's dump of its spec (hundreds of characters)."""
    return brief(err).split(" See full TensorStore details")[0][:200]


def describe_unrestorable(directory: Path, failed: Sequence[tuple[int, BaseException]],
                          params: Any, opt_state: Any = None, what: str = "this run's state",
                          fix_shapes: str = "use a new --workdir for the new shapes, or train "
                          "with the config the run was trained with") -> str:
    """Why no checkpoint of ``directory`` restores (``failed``: (step, error), newest first):
    the stored shapes differ from this run's (named parameter by parameter, with ``fix_shapes``
    as the remedy), or the checkpoints are damaged (named step by step with the file or folder
    the error points at, and what to do)."""
    steps = sorted(s for s, _ in failed)
    newest, err = failed[0]
    mismatch = shape_mismatch(directory, newest, params, opt_state)
    head = f"No checkpoint in {directory} (steps {steps}) restores into {what}"
    if mismatch:
        shown = "\n".join(f"  {line}" for line in mismatch[:8])
        more = f"\n  ... and {len(mismatch) - 8} more" if len(mismatch) > 8 else ""
        return (f"{head}: the stored parameters have other shapes than this config makes:\n"
                f"{shown}{more}\nThe config changed the model's shapes: {fix_shapes}.")
    each = "; ".join(f"step {s}: {damaged_file(e, directory / str(s))} ({short_error(e)})"
                     for s, e in failed)
    folders = ", ".join(str(directory / str(s)) for s, _ in failed)
    known = "the stored shapes match this config" if mismatch == [] else \
        "not even the stored shapes can be read"
    return (f"{head}: {'it is' if len(failed) == 1 else 'they are'} damaged (a truncated or "
            f"missing file; {known}): {each}. Restore "
            f"{'that folder' if len(failed) == 1 else 'those folders'} from a backup, or delete "
            f"{folders} to start over without {'it' if len(failed) == 1 else 'them'} "
            "(--verbose shows the whole error).")


def restore_latest_intact(directory: Path, steps: list[int], target: Any) -> tuple[Any, int]:
    """(state, step) of the newest checkpoint in ``directory`` that restores into ``target``.

    A newer one that fails while an older one restores is damaged (a truncated file, a disk
    that filled up): it is renamed ``<step>.unreadable`` (kept for inspection, ignored from then
    on) with a warning, and training resumes from the older one. When none restores, RunError
    says why (``describe_unrestorable``): the stored shapes differ from the config's (which
    parameters), or the checkpoints are damaged (which files, and what to do).
    """
    state, step, failed = first_restorable(sorted(steps, reverse=True),
                                           lambda s: restore_state(directory, s, target))
    if step is None:
        raise RunError(describe_unrestorable(directory, failed, target.params,
                                             target.opt_state)) from failed[0][1]
    for bad, err in failed:
        aside = directory / f"{bad}.unreadable"
        os.replace(directory / str(bad), aside)
        warnings.warn(f"Checkpoint {directory / str(bad)} could not be restored ({brief(err)}); "
                      f"it was moved to {aside} and the run resumes from step {step}.",
                      stacklevel=2)
    return state, step


def restore_params(directory: Path, step: int, params_shapes: Any, sharding: Any,
                   opt_state_shapes: Callable[[], Any]) -> Any:
    """The parameters alone of ``step`` in the checkpoint folder ``directory``.

    ``params_shapes``: a pytree of ShapeDtypeStructs; ``sharding``: where to put them.
    ``opt_state_shapes``: called only for a legacy checkpoint, whose single item also holds the
    optimizer state (its layout must be known to restore it).
    """
    mngr = ocp.CheckpointManager(directory.absolute())
    try:
        if _is_legacy(directory, step):
            shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params_shapes,
                      "opt_state": opt_state_shapes()}
            tree = mngr.restore(step, args=ocp.args.StandardRestore(_abstract(shapes, sharding)))
            return tree["params"]
        items = mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params_shapes, sharding))))
        return items.params
    finally:
        mngr.close()
