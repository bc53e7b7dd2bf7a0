"""Loss-term ablation: train a grid of settings over several seeds, evaluate, one comparison table.

Each setting is a set of config overrides (e.g. ``{"loss.beta_r": 0.0}``); each (setting, seed)
trains into ``<root>/<setting>/seed<k>`` (resumable, never retrained once finished). The table
gives, per setting, the mean +- std over seeds of the per-run mean over test slices, and the mean
of the per-run std over slices in brackets, against each reference. A setting may train on
another dataset (``data.config``, e.g. a K-way preset); its test split is read for it. With
``test_data`` every run is scored on that preset's test split instead (a transfer test: trained
on one set, applied to another of the same builder), beside that set's baselines. A second
table gives what a training step costs per setting: the networks trained, their parameters, the
seconds per step measured in the runs, and XLA's memory for one compiled step.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from consensus_jax import evaluation, experiment, input_pipeline, methods, train_lib
from consensus_jax import workdir as wd
from consensus_jax.errors import ConfigError


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted keys set, e.g. {"loss.beta_r": 0.0}; a key the config
    does not have is an error, never a new field."""
    config = copy.deepcopy(config)
    was_locked = config.is_locked
    config.lock()
    for key, value in overrides.items():
        try:
            config.update_from_flattened_dict({key: value})
        except KeyError as err:
            raise ConfigError(f"Ablation override {key!r}: no such config key ({err}).") from None
    if not was_locked:
        config.unlock()
    return config


def compiled_step_cost(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Networks, parameters and XLA's memory of one compiled training step of ``config``.

    The step is compiled from abstract shapes (``jax.eval_shape``: nothing is allocated) for a
    batch of ``train.batch_size`` patches of ``train.patch_size_px``, as training runs it.

    Returns:
      ``networks``, ``parameters`` (count, all networks), and ``step_memory_bytes``:
      arguments + outputs - donated (aliased) buffers + XLA's temporaries of one step, from the
      compiled step's ``memory_analysis()`` (None where the backend gives none), with its parts.
    """
    method = methods.from_config(config)
    optimizer = train_lib.make_optimizer(config.optim.learning_rate,
                                         config.optim.get("schedule", "constant"),
                                         max(int(config.train.num_steps), 1))
    key = jax.random.PRNGKey(0)
    state = jax.eval_shape(lambda k: train_lib.create_train_state(method, optimizer, k), key)
    size, channels = int(config.train.patch_size_px), 2 if config.modality == "mri" else 1
    batch = {k: jax.ShapeDtypeStruct((int(config.train.batch_size), size, size, channels),
                                     np.float32) for k in method.input_keys()}
    out: dict[str, Any] = {
        "networks": method.num_networks,
        "parameters": int(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)))}
    stats = train_lib.make_train_step(method, optimizer).lower(state, batch, key).compile() \
        .memory_analysis()
    if stats is None:
        out["step_memory_bytes"] = None
        return out
    parts = {name: int(getattr(stats, f"{name}_size_in_bytes"))
             for name in ("argument", "output", "alias", "temp")}
    out["step_memory_bytes"] = (parts["argument"] + parts["output"] - parts["alias"]
                                + parts["temp"])
    out["step_memory_parts_bytes"] = parts
    return out


def seconds_per_step(workdir: Path, batch_size: int) -> float | None:
    """The run's median seconds per training step, from the patches/s that training logged
    (``metrics.jsonl``) between log steps; the first interval (compilation) is left out."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return None
    rates = [row["patches_per_s"] for row in map(json.loads, path.read_text().splitlines())
             if row.get("patches_per_s")]
    rates = rates[1:] or rates
    return float(np.median([batch_size / r for r in rates])) if rates else None


def _test_images(cache: dict, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The test split of ``config``'s dataset, read once per dataset and K."""
    data = config.data
    key = (data.name, data.config, int(data.get("num_splits", 2)))
    if key not in cache:
        cache[key] = input_pipeline.load_split(data, data.test_split, config.modality)
    return cache[key]


def _scored_on(config: ml_collections.ConfigDict, test_data: str | None
               ) -> ml_collections.ConfigDict:
    """The config whose test split scores a run of ``config``: its own, or ``test_data``'s."""
    return apply_overrides(config, {"data.config": test_data}) if test_data else config


def run_grid(base: ml_collections.ConfigDict, settings: Mapping[str, Mapping[str, Any]],
             seeds: Sequence[int], root: str | Path, out_dir: str | Path,
             test_data: str | None = None) -> Path:
    """Trains and evaluates every (setting, seed); writes ablation.md and ablation.json.

    ``test_data``: a preset of the base dataset's builder (e.g. "mni" for runs trained on the
    MRI "quick" knees) whose test split scores every run instead of the run's own; the runs are
    trained (or reused) exactly as without it.
    """
    root, out_dir = Path(root), Path(out_dir)
    modality = base.modality
    primary = jax.process_index() == 0  # all processes train and evaluate; one writes
    cache: dict = {}
    images = _test_images(cache, _scored_on(base, test_data))
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {}
    steps: dict[str, list[str]] = {}
    costs: dict[str, dict[str, Any]] = {}
    for name, overrides in settings.items():
        for seed in seeds:
            config = apply_overrides(base, {**overrides, "seed": seed})
            workdir = root / re.sub(r"[^A-Za-z0-9.=_-]+", "_", name) / f"seed{seed}"
            if primary:
                print(f"== {name}, seed {seed}: {dict(overrides)} -> {workdir}")
            experiment.fit(config, workdir)
            method, params, step, _ = evaluation.load_run(workdir)
            steps.setdefault(name, []).append(f"{step} (seed {seed})")
            if name not in costs:
                costs[name] = {**compiled_step_cost(config), "seconds_per_step": []}
            costs[name]["seconds_per_step"].append(
                seconds_per_step(workdir, int(config.train.batch_size)))
            scored = _test_images(cache, _scored_on(config, test_data))
            outputs = evaluation.predict(method, params, scored, config.eval.batch_size)
            for result in evaluation.score(modality, outputs, scored):
                label = name if len(outputs) == 1 else f"{name} [{result.method}]"
                for metric, values in result.values.items():
                    key = f"{evaluation.METRIC_LABELS.get(metric, metric)} vs {result.reference}"
                    rows.setdefault(label, {}).setdefault(key, []).append(
                        (float(np.mean(values)), float(np.std(values))))
    baselines = {m: images[f] for m, f in evaluation.BASELINE_FEATURE.items()
                 if m in evaluation.METHOD_ORDER[modality][:2] and f in images}
    for result in evaluation.score(modality, baselines, images):
        for metric, values in result.values.items():
            key = f"{evaluation.METRIC_LABELS.get(metric, metric)} vs {result.reference}"
            rows.setdefault(result.method, {})[key] = [(float(np.mean(values)),
                                                        float(np.std(values)))]
    columns = list(next(iter(rows.values())))
    where = f"{base.data.name}/{base.data.config}"
    if test_data:
        where = (f"runs trained on {where}, scored on the test split of {base.data.name}/"
                 f"{test_data}")
    lines = [f"Ablation on {where} ({images['x1'].shape[0]} test "
             f"slices), seeds {list(seeds)}: mean ± std over seeds of the per-run mean over "
             "slices [mean std over slices].", "",
             "| setting | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, cols in rows.items():
        cells = []
        for c in columns:
            means = np.array([m for m, _ in cols.get(c, [])])
            stds = np.array([s for _, s in cols.get(c, [])])
            cells.append(f"{means.mean():.2f} ± {means.std():.2f} [{stds.mean():.1f}]"
                         if means.size else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Checkpoints evaluated (each run's best validation loss; its latest where the "
              "dataset has no validation split), step per seed: "
              + "; ".join(f"{name} {', '.join(s)}" for name, s in steps.items()) + "."]
    lines += ["", *cost_table(costs, base)]
    table = "\n".join(lines) + "\n"
    if not primary:
        return out_dir / "ablation.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    wd.atomic_write(out_dir / "ablation.md", table)
    wd.atomic_write(out_dir / "ablation.json", json.dumps(
        {"settings": {k: dict(v) for k, v in settings.items()}, "seeds": list(seeds),
         "trained_on": f"{base.data.name}/{base.data.config}",
         "scored_on": f"{base.data.name}/{test_data or base.data.config}",
         "rows": rows, "checkpoint_steps": steps, "step_costs": costs,
         "device": jax.devices()[0].device_kind}, indent=1))
    print(table)
    return out_dir / "ablation.md"


def cost_table(costs: Mapping[str, Mapping[str, Any]], base: ml_collections.ConfigDict
               ) -> list[str]:
    """Markdown lines of what one training step costs per setting."""
    lines = [f"What a training step costs ({int(base.train.batch_size)} patches of "
             f"{int(base.train.patch_size_px)} px, {jax.devices()[0].device_kind}): seconds per "
             "step are the median over each run's logged intervals, mean ± std over seeds; "
             "memory is XLA's for the compiled step (arguments + outputs - donated buffers + "
             "temporaries).", "",
             "| setting | networks | parameters | s / step | XLA memory per step (MiB) |",
             "|---|---|---|---|---|"]
    for name, c in costs.items():
        secs = np.array([s for s in c["seconds_per_step"] if s is not None])
        time_cell = f"{secs.mean():.3f} ± {secs.std():.3f}" if secs.size else "not logged"
        memory = c["step_memory_bytes"]
        memory_cell = f"{memory / 2**20:.1f}" if memory is not None else \
            "not reported by this backend"
        lines.append(f"| {name} | {c['networks']} | {c['parameters']:,} | {time_cell} | "
                     f"{memory_cell} |")
    return lines
