"""Offline dataset preparation: TFDS builders that write split noisy pairs as TFRecord shards."""

import json
from pathlib import Path
from typing import Any

from consensus_jax.errors import ConfigError


def check_reused_dataset(data_dir: str | Path, expected: dict[str, Any]) -> None:
    """Stop if a finished dataset in ``data_dir`` was built from other settings than the preset
    now has (e.g. a recalibrated dose): reusing it would silently train on stale data.

    ``expected`` is the config's metadata, which the builder stores as ``metadata.json``.
    """
    path = Path(data_dir) / "metadata.json"
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    wanted = json.loads(json.dumps(expected))
    changed = [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
    if changed:
        lines = "\n".join(f"  {k}: stored {stored.get(k)!r}, now {wanted.get(k)!r}"
                          for k in changed)
        raise ConfigError(
            f"The finished dataset in {data_dir} was built with other settings than this "
            f"config has now:\n{lines}\nMove or delete that folder to rebuild it, or pass "
            "--config.name=<new name> to build the new settings beside it.")
