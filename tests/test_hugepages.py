"""The entry points restart once with glibc's huge-page tunable (consensus_jax.hugepages)."""

import os
import platform
import subprocess
import sys

import pytest

from consensus_jax import hugepages

linux_glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="needs Linux with glibc")


@linux_glibc
def test_environment_adds_the_tunable_once():
    env = hugepages.environment_with_huge_pages({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    kept = hugepages.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hugepages.environment_with_huge_pages(env) is None  # already set: no loop
    assert hugepages.environment_with_huge_pages({"CONSENSUS_JAX_HUGE_PAGES": "0"}) is None


@linux_glibc
def test_restart_runs_the_same_command_with_the_tunable():
    code = ("import os, sys; from consensus_jax.hugepages import restart_with_huge_pages; "
            "print('start', flush=True); restart_with_huge_pages(); "
            "print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", hugepages.SWITCH)}
    out = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    # One restart: 'start' twice, then the restarted process with the same arguments.
    assert out == ["start", "start", "glibc.malloc.hugetlb=1 ['a', '--b=1']"]
    off = subprocess.run([sys.executable, "-c", code], env={**env, hugepages.SWITCH: "0"},
                         capture_output=True, text=True, timeout=60, check=False)
    assert off.returncode != 0 and "KeyError" in off.stderr  # no restart, no tunable
