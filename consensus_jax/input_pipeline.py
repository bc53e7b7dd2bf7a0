"""Reads a prepared dataset split into host numpy arrays for the trainer and the evaluator.

The CT/MRI datasets are TFDS datasets written by ``data_prep`` (TFRecord shards); they are read
with ``tfds.builder_from_directory`` so the reader never imports the builders. TensorFlow is
imported lazily (it costs seconds per process and is only needed for TFRecord I/O), with GPUs
hidden from it so it never competes with JAX for accelerator memory.

``data.name = "synthetic"`` gives an in-memory smooth-image set (tests only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from consensus_jax import features, synthetic
from consensus_jax.errors import ConfigError, InputError, MissingInputError

#: Image features every slice of a split of the paper's pair (K = 2) carries, by modality;
#: ``features.image_keys(modality, K)`` gives them for K splits.
IMAGE_KEYS = {"ct": features.CT_IMAGE_KEYS, "mri": features.MRI_IMAGE_KEYS}
#: The key used as the training/evaluation reference ``x_ref`` (the paper's reference image).
REFERENCE_KEY = {"ct": "x_full", "mri": "x_ref"}


def import_tensorflow() -> Any:
    """Imports TensorFlow for I/O only, hiding accelerators from it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    return tf


def dataset_dir(data_cfg: Any) -> Path:
    """The folder of a prepared TFDS dataset: <data_dir>/<name>/<config>/<version>."""
    root = Path(data_cfg.data_dir) / data_cfg.name / data_cfg.config
    if not root.is_dir():
        raise MissingInputError(
            f"No prepared dataset at {root}. Build it first, e.g. "
            f"`python -m data_prep.{data_cfg.name.split('_')[0]} --config={data_cfg.config} "
            f"--data_dir={data_cfg.data_dir}`."
        )
    versions = sorted((p for p in root.iterdir() if p.is_dir() and
                       (p / "dataset_info.json").exists()), key=lambda p: p.name)
    if not versions:
        raise MissingInputError(
            f"{root} holds no complete dataset version (no dataset_info.json): an earlier build "
            "was interrupted. Rerun the data_prep command; it resumes from scratch."
        )
    return versions[-1]


def _synthetic_split(data_cfg: Any, split: str, modality: str) -> dict[str, np.ndarray]:
    channels = 2 if modality == "mri" else 1
    seed, num = {data_cfg.train_split: (0, 24),
                 data_cfg.get("validation_split", "validation"): (2000, 6)}.get(split, (1000, 6))
    size = int(data_cfg.get("synthetic_size_px", 32))
    num_splits = configured_splits(data_cfg)
    pairs = synthetic.noisy_pairs(num, size, 0.5, seed=seed, channels=channels,
                                  num_splits=num_splits)
    out = {k: pairs[k] for k in (*features.split_keys(num_splits), "x_est")}
    for k in features.image_keys(modality, num_splits):
        out.setdefault(k, pairs["x_ref"])
    out["patient_id"] = np.repeat(np.arange(num // 3), 3).astype(np.int64)
    out["slice_index"] = np.tile(np.arange(3), num // 3).astype(np.int64)
    return out


def configured_splits(data_cfg: Any) -> int:
    """``data.num_splits``: K, the split reconstructions x1 .. xK a run reads (default 2)."""
    value = data_cfg.get("num_splits", 2)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(f"data.num_splits={value!r}: must be an integer >= 2 (the paper's "
                          "odd/even halves: 2).")
    return value


def dataset_splits(data_cfg: Any) -> int:
    """K of a prepared dataset: its metadata's ``num_splits`` (datasets of the paper's pair,
    including those written before K was a setting, store none: 2)."""
    if data_cfg.name == "synthetic":
        return configured_splits(data_cfg)
    return int(dataset_metadata(data_cfg).get("num_splits", 2))


def check_num_splits(data_cfg: Any) -> int:
    """Raises ConfigError (exit 2) unless ``data.num_splits`` is the dataset's K; returns K."""
    return check_num_splits_against(data_cfg, dataset_splits(data_cfg))


def check_num_splits_against(data_cfg: Any, stored: int) -> int:
    """``check_num_splits`` for a dataset of ``stored`` splits: the error names the command
    that prepares a dataset of ``data.num_splits``."""
    wanted = configured_splits(data_cfg)
    if wanted == stored:
        return stored
    base = data_cfg.config
    for k in range(2, 10):
        base = base.removesuffix(f"_k{k}")
    modality = data_cfg.name.split("_")[0]
    if wanted == 2:
        prepare = f"`python -m data_prep.{modality} --config={base}`"
        target = base
    else:
        target = f"{base}_k{wanted}"
        prepare = (f"`python -m data_prep.{modality} --config={base} "
                   f"--config.num_splits={wanted} --config.name={target}`")
        if modality == "ct" and base == "quick" and wanted in (3, 4):
            prepare = f"`python -m data_prep.ct --config={target}` (a preset)"
    raise ConfigError(
        f"--config.data.num_splits={wanted}, but the dataset {data_cfg.name}/{data_cfg.config} "
        f"holds K = {stored} split reconstructions (x1 .. x{stored}). Prepare a {wanted}-way "
        f"dataset with {prepare} and pass --config.data.config={target}, or set "
        f"--config.data.num_splits={stored} to train on this one.")


def has_split(data_cfg: Any, split: str) -> bool:
    """Whether the prepared dataset has ``split`` (datasets built before the validation split
    existed have only train and test)."""
    if data_cfg.name == "synthetic":
        return True
    import json

    info = json.loads((dataset_dir(data_cfg) / "dataset_info.json").read_text())
    return any(s.get("name") == split for s in info.get("splits", []))


def load_split(data_cfg: Any, split: str, modality: str = "ct", keys: tuple[str, ...] | None = None
               ) -> dict[str, np.ndarray]:
    """All slices of a split as numpy arrays, images [S, H, W, C] float32.

    Adds ``x_ref`` (the paper's reference: CT full-dose FBP, MRI fully sampled image). Slices are
    ordered by patient, then slice, whatever the shard layout on disk. An MRI split with held-out
    lines (validation) also has ``heldout_lines, heldout_kspace, maps, heldout_valid``
    (``features.stack_heldout``: padded to the most lines and coils of its slices).

    Args:
      data_cfg: the ``data`` group of an experiment config.
      split: split name, e.g. "train" or "test".
      modality: "ct" or "mri".
      keys: image keys to load (default: all of the modality's).

    Raises:
      ConfigError: ``data.num_splits`` differs from the dataset's K (``check_num_splits``).
    """
    if modality not in IMAGE_KEYS:
        raise ConfigError(f"modality must be 'ct' or 'mri', got {modality!r}.")
    if data_cfg.name == "synthetic":
        out = _synthetic_split(data_cfg, split, modality)
    else:
        check_num_splits(data_cfg)
        out = _read_tfds(data_cfg, split)
    out["x_ref"] = out[REFERENCE_KEY[modality]]
    if keys is not None:
        missing = sorted(set(keys) - set(out))
        if missing:
            raise InputError(f"Dataset {data_cfg.name}/{data_cfg.config} has no features "
                             f"{missing}; it has {sorted(out)}.")
        out = {k: out[k] for k in (*keys, "patient_id", "slice_index") if k in out}
    limit = int(data_cfg.get("max_train_slices", 0) or 0)
    if limit and split == data_cfg.train_split:
        out = {k: v[:limit] for k, v in out.items()}
    return out


def _read_tfds(data_cfg: Any, split: str) -> dict[str, np.ndarray]:
    import_tensorflow()
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(dataset_dir(data_cfg)))
    if split not in builder.info.splits:
        raise InputError(f"Split {split!r} not in {dataset_dir(data_cfg)}; it has "
                         f"{sorted(builder.info.splits)}.")
    missing = [p for p in builder.info.splits[split].filepaths if not Path(p).exists()]
    if missing:  # TensorFlow would fail mid-read with its own traceback
        raise MissingInputError(
            f"Split {split!r} of {dataset_dir(data_cfg)} lacks {len(missing)} of its files "
            f"({Path(missing[0]).name}{', ...' if len(missing) > 1 else ''}): the dataset is "
            "incomplete. Delete that folder and rerun the data_prep command that made it.")
    ds = builder.as_dataset(split=split, shuffle_files=False)
    columns: dict[str, list[np.ndarray]] = {}
    for example in tfds.as_numpy(ds):
        for k, v in example.items():
            columns.setdefault(k, []).append(np.asarray(v))
    if not columns:
        raise InputError(f"Split {split!r} of {dataset_dir(data_cfg)} is empty.")
    heldout = {k: columns.pop(k) for k in features.MRI_HELDOUT_KEYS if k in columns}
    out = {k: np.stack(v) for k, v in columns.items()}
    if heldout and any(len(v) for v in heldout["heldout_lines"]):
        # Only validation slices hold out lines; elsewhere the (empty) features are left out.
        out.update(features.stack_heldout(heldout))
    # Deterministic order whatever the shard layout: by patient, then slice.
    order = np.lexsort((out["slice_index"], out["patient_id"]))
    return {k: v[order] for k, v in out.items()}


def dataset_metadata(data_cfg: Any) -> dict[str, Any]:
    """The builder's metadata (geometry, dose, normalisation) of a prepared dataset, or {}."""
    if data_cfg.name == "synthetic":
        return {"units": "arbitrary"}
    import json

    path = dataset_dir(data_cfg) / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}
