"""The Makefile sets the environment the programs are measured with."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_exports_the_huge_page_tunable():
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(["make", "-s", "--no-print-directory", "print-env"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in out
    # A value the user set is kept.
    mine = subprocess.run(["make", "-s", "--no-print-directory", "print-env"], cwd=ROOT,
                          env={**env, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                          capture_output=True, text=True, check=True).stdout
    assert "GLIBC_TUNABLES=glibc.malloc.arena_max=2" in mine
