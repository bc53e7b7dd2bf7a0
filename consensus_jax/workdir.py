"""Run folders: the stored config, the checkpoints, and files written so that none is ever half
written.

A training workdir holds ``config.json`` (the flattened experiment config), ``checkpoints/``
(orbax), ``metrics.jsonl`` and ``tensorboard/``. Both the trainer (``experiment``) and the
evaluator (``evaluation``) read run folders through this module; neither imports the other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


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
