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


def test_declared_floors_are_the_tested_minimum_versions():
    """setup.cfg's floors (install_requires and the test extra) are exactly the pins of
    constraints/minimum.txt, which `make test-min-versions` installs and tests."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = [line.strip() for section in (cfg["options"]["install_requires"],
                                             cfg["options.extras_require"]["test"])
                for line in section.splitlines() if line.strip()]

    def key(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    floors = {key(n): v for n, v in (re.fullmatch(r"([\w.\-]+)>=([\w.]+)", d).groups()
                                     for d in declared)}
    pins = {key(n): v for n, v in (line.split("==") for line in
                                   (ROOT / "constraints/minimum.txt").read_text().splitlines()
                                   if line and not line.startswith("#"))}
    assert floors == pins
