"""Transparent huge pages for XLA's CPU buffers: restart the program once with glibc's tunable.

On XLA CPU every execution of the train step maps a fresh temporary buffer (171 MB at the quick
size) and touches it page by page: about 40,000 minor page faults per quick step, a third of the
step's time spent in the kernel (bench/PERF_LOG.md). Where the kernel's transparent huge pages are
in ``madvise`` mode (the common default), glibc's tunable ``glibc.malloc.hugetlb=1`` makes malloc
advise huge pages for its large mappings, which cuts the faults about 20-80x and the quick step by
about 20%. Tunables are read when a process starts, so the entry points (train.py, evaluate.py,
ablation.py, demo.py, the benchmarks) call ``restart_with_huge_pages()`` first: it re-executes
the same command line once with the tunable added. Children inherit it.

Set ``CONSENSUS_JAX_HUGE_PAGES=0`` to turn it off. This module imports nothing heavy, so the
restart happens before jax or TensorFlow load.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "CONSENSUS_JAX_HUGE_PAGES"


def environment_with_huge_pages(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to restart with, or None when no restart is needed (already set, turned
    off, or not Linux with glibc)."""
    if environ.get(SWITCH, "1") == "0" or sys.platform != "linux":
        return None
    if platform.libc_ver()[0] != "glibc":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(t for t in (current, TUNABLE) if t)}


def restart_with_huge_pages(execve: Callable[..., None] = os.execve) -> None:
    """Re-execute this process's command line once with ``GLIBC_TUNABLES`` extended by
    ``glibc.malloc.hugetlb=1``; returns without doing anything when no restart is needed."""
    env = environment_with_huge_pages(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    execve(sys.executable, list(sys.orig_argv), env)
