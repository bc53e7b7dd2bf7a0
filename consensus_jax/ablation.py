"""Loss-term ablation: train a grid of settings over several seeds, evaluate, one comparison table.

Each setting is a set of config overrides (e.g. ``{"loss.beta_r": 0.0}``); each (setting, seed)
trains into ``<root>/<setting>/seed<k>`` (resumable, never retrained once finished). The table
gives, per setting, the mean +- std over seeds of the per-run mean over test slices, and the mean
of the per-run std over slices in brackets, against each reference.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from consensus_jax import evaluation, experiment, input_pipeline
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


def run_grid(base: ml_collections.ConfigDict, settings: Mapping[str, Mapping[str, Any]],
             seeds: Sequence[int], root: str | Path, out_dir: str | Path) -> Path:
    """Trains and evaluates every (setting, seed); writes ablation.md and ablation.json."""
    root, out_dir = Path(root), Path(out_dir)
    modality = base.modality
    primary = jax.process_index() == 0  # all processes train and evaluate; one writes
    images = input_pipeline.load_split(base.data, base.data.test_split, modality)
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {}
    steps: dict[str, list[str]] = {}
    for name, overrides in settings.items():
        for seed in seeds:
            config = apply_overrides(base, {**overrides, "seed": seed})
            workdir = root / re.sub(r"[^A-Za-z0-9.=_-]+", "_", name) / f"seed{seed}"
            if primary:
                print(f"== {name}, seed {seed}: {dict(overrides)} -> {workdir}")
            experiment.fit(config, workdir)
            method, params, step, _ = evaluation.load_run(workdir)
            steps.setdefault(name, []).append(f"{step} (seed {seed})")
            outputs = evaluation.predict(method, params, images, config.eval.batch_size)
            for result in evaluation.score(modality, outputs, images):
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
    lines = [f"Ablation on {base.data.name}/{base.data.config} ({images['x1'].shape[0]} test "
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
    table = "\n".join(lines) + "\n"
    if not primary:
        return out_dir / "ablation.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    wd.atomic_write(out_dir / "ablation.md", table)
    wd.atomic_write(out_dir / "ablation.json", json.dumps(
        {"settings": {k: dict(v) for k, v in settings.items()}, "seeds": list(seeds),
         "rows": rows, "checkpoint_steps": steps}, indent=1))
    print(table)
    return out_dir / "ablation.md"
