"""README.md is the entry page, and every command it quotes works as written.

Checked: each `make X` target is defined in the Makefile; each `python script.py ...` /
`python -m module ...` names an existing script or module, and each of its `--flags` is one the
program defines (read by running the program up to its flag parsing, so no help text is
needed); each `--config.a.b` key exists in the config that `--config` names (data_prep presets:
in the builder's presets); the page is at most 12 KiB, opens with `make demo` and `make test`,
maps the code ("What is where") within its first 150 lines, and links only to files that exist.
"""

import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_BYTES = 12_288
MAP_HEADING = "## What is where"
MAP_WITHIN_LINES = 150
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PYTHONS = {"python", "python3"}
OUTPUT_PREFIXES = ("results/", "work_dirs/", "data/", "exported/", "scan_", ".venv")

# Runs a program until it parses its command line, then prints the flags it defines instead
# (absl FlagValues or argparse), so neither a help text nor the program's work is needed.
_PROBE = r"""
import argparse, json, os, runpy, sys
from absl import flags

def dump(names):
    sys.stdout.write("\n@@FLAGS@@" + json.dumps(sorted(set(names))) + "\n")
    sys.stdout.flush()
    os._exit(0)

original = flags.FlagValues.__call__
def absl_call(self, argv, known_only=False):
    if known_only:
        return original(self, argv, known_only=known_only)
    dump(list(self))
flags.FlagValues.__call__ = absl_call

def argparse_parse(self, args=None, namespace=None):
    dump(o[2:] for a in self._actions for o in a.option_strings if o.startswith("--"))
argparse.ArgumentParser.parse_args = argparse_parse
argparse.ArgumentParser.parse_known_args = argparse_parse

kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target]
sys.path.insert(0, os.getcwd())
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
            "CUDA_VISIBLE_DEVICES": ""}


def _help_flags(argv: list[str]) -> set[str]:
    """Fallback: the flags listed by --helpfull or --help (exit status 0 or 1 accepted)."""
    for option in ("--helpfull", "--help"):
        result = subprocess.run([*argv, option], cwd=ROOT, capture_output=True, text=True,
                                timeout=120, env=_env())
        if result.returncode in (0, 1):
            names = set(re.findall(r"^\s+(?:-\w, )?--(?:\[no\])?([A-Za-z][\w.-]*)",
                                   result.stdout, flags=re.M))
            if names:
                return names
    return set()


@functools.cache
def program_flags(kind: str, target: str) -> frozenset[str]:
    """The long flags a project program defines; kind is "module" or "script"."""
    result = subprocess.run([sys.executable, "-c", _PROBE, kind, target], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=_env())
    found = re.findall(r"^@@FLAGS@@(.*)$", result.stdout, flags=re.M)
    if found:
        return frozenset(json.loads(found[-1]))
    launch = [sys.executable, "-m", target] if kind == "module" else [sys.executable, target]
    names = _help_flags(launch)
    assert names, (f"cannot read the flags of {target}:\n{result.stdout[-2000:]}"
                   f"{result.stderr[-2000:]}")
    return frozenset(names)


@functools.cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return frozenset(targets)


def _load_config_file(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_readme_config", ROOT / path)
    module = importlib.util.module_from_spec(module_spec)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


@functools.cache
def data_presets(modality: str) -> frozenset[str]:
    module = importlib.import_module(
        f"data_prep.{modality}_consensus.{modality}_consensus_dataset_builder")
    return frozenset(module.PRESETS)


def _has_key(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def _config_problems(module: str | None, spec: str | None, keys: list[str]) -> list[str]:
    """Problems of a command's --config value and its --config.* keys."""
    if spec is None:
        return [f"--config.{k} without --config" for k in keys]
    problems = []
    if module and module.startswith("data_prep.") and re.fullmatch(r"\w+", spec):
        modality = module.rsplit(".", 1)[1]
        if spec not in data_presets(modality):
            return [f"--config={spec}: not a preset of data_prep.{modality} "
                    f"({', '.join(sorted(data_presets(modality)))})"]
        spec = f"configs/data/{modality}.py:{spec}"
    path = spec.partition(":")[0]
    if not (ROOT / path).is_file():
        return [f"--config={spec}: no such config file"]
    if keys:
        config = _load_config_file(spec)
        problems += [f"--config.{k}: no such key in {spec}" for k in keys
                     if not _has_key(config, k)]
    return problems


def check_command(command: str) -> list[str]:
    """What is wrong with one quoted command line (an empty list: nothing)."""
    tokens = shlex.split(command, comments=True)
    while tokens and re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[0]):  # VAR=value prefixes
        tokens.pop(0)
    if not tokens:
        return []
    program = tokens[0]
    if program == "make":
        return [f"make {t}: no such target in the Makefile" for t in tokens[1:]
                if not t.startswith("-") and "=" not in t and t not in make_targets()]
    if program not in PYTHONS and not program.endswith("/python"):
        return []  # other tools (tensorboard, ...) are not this project's
    if len(tokens) < 2:
        return [f"{command}: no program"]
    if tokens[1] == "-m":
        if len(tokens) < 3:
            return [f"{command}: -m without a module"]
        kind, target, args = "module", tokens[2], tokens[3:]
        local = ROOT / target.replace(".", "/")
        if not (local.with_suffix(".py").is_file() or (local / "__main__.py").is_file()):
            if local.parent.is_dir() and (local.parent / "__init__.py").is_file():
                return [f"python -m {target}: no such module"]
            if importlib.util.find_spec(target.split(".")[0]) is None:
                return [f"python -m {target}: no such module"]
            return []  # a third-party module (pytest, ...): its flags are not checked here
    else:
        kind, target, args = "script", tokens[1], tokens[2:]
        if not (ROOT / target).is_file():
            return [f"python {target}: no such script"]
    defined = program_flags(kind, target)
    problems, keys, config = [], [], None
    for arg in args:
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if name.startswith("config."):
            keys.append(name[len("config."):])
        elif name in defined or (name.startswith("no") and name[2:] in defined):
            if name == "config" and eq:
                config = value
        else:
            problems.append(f"{target}: no flag --{name}")
    if keys or (config is not None and "config" in defined):
        problems += _config_problems(target if kind == "module" else None, config, keys)
    return problems


def readme_commands(text: str) -> list[str]:
    """The command lines of the code blocks (continuations joined) and of inline code that
    starts with make or python."""
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(line.strip())
    prose = FENCE.sub("", text)
    for span in SPAN.findall(prose):
        first = span.split(" ", 1)[0]
        if " " in span and (first == "make" or first in PYTHONS or first.endswith("/python")):
            commands.append(span)
    return commands


@pytest.fixture(scope="module")
def text():
    return README.read_text(encoding="utf-8")


def test_readme_is_short(text):
    size = README.stat().st_size
    assert size <= MAX_BYTES, f"README.md is {size} bytes; move detail to docs/ (<= {MAX_BYTES})"


def test_readme_opens_with_make_demo_and_make_test(text):
    first = FENCE.search(text)
    assert first, "README.md has no code block"
    before = text[:first.start()].strip()
    assert re.fullmatch(r"# [^\n]+", before), f"README.md must open with the commands: {before!r}"
    commands = [shlex.split(line, comments=True) for line in first.group(1).splitlines()]
    assert [c for c in commands if c] == [["make", "demo"], ["make", "test"]]


def test_code_map_is_near_the_top(text):
    lines = text.splitlines()
    assert MAP_HEADING in lines, f"no {MAP_HEADING!r} heading"
    number = lines.index(MAP_HEADING) + 1
    assert number <= MAP_WITHIN_LINES, f"{MAP_HEADING!r} is on line {number}"


def test_every_quoted_command_exists(text):
    commands = readme_commands(text)
    assert any(c.startswith("python train.py") for c in commands)  # the extraction works
    programs = set()
    for command in commands:
        tokens = shlex.split(command, comments=True)
        if len(tokens) > 1 and tokens[0] in PYTHONS:
            if tokens[1] == "-m" and len(tokens) > 2 and \
                    (ROOT / tokens[2].replace(".", "/")).with_suffix(".py").is_file():
                programs.add(("module", tokens[2]))
            elif tokens[1].endswith(".py") and (ROOT / tokens[1]).is_file():
                programs.add(("script", tokens[1]))
    with ThreadPoolExecutor(max_workers=3) as pool:  # warm the cache in parallel
        list(pool.map(lambda p: program_flags(*p), sorted(programs)))
    problems = [p for command in commands for p in check_command(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command", [
    "make demoo",
    "python trian.py --config=configs/ct_quick.py",
    "python train.py --config=configs/ct_quick.py --workdirr=w",
    "python train.py --config=configs/ct_quick.py --workdir=w --config.loss.kindd=distill",
    "python train.py --config=configs/ct_quik.py --workdir=w",
    "python evaluate.py --runs=a --ot=b",
    "python -m consensus_jax.exportt --workdir=w --out=o",
    "python -m consensus_jax.denoise --model=m --input=i --ouptut=o",
    "python -m data_prep.ct --config=quik",
    "python -m data_prep.ct --config=quick --config.photons_per_rays=1e4",
    "python demo.py --modalty=ct",
])
def test_a_misspelled_command_is_caught(command):
    assert check_command(command), f"not caught: {command}"


@pytest.mark.parametrize("command", [
    "make demo",
    "python demo.py --modality=mri",
    "python -m data_prep.mri --config=fastmri --manual_dir=x",
    "python train.py --config=configs/mri_quick.py --workdir=w --noallow_config_change",
    "GLIBC_TUNABLES=x python evaluate.py --runs=a,b --out=o --trajectory",
])
def test_a_correct_command_passes(command):
    assert check_command(command) == [], command


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _link_problems(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", FENCE.sub("", file.read_text(encoding="utf-8")),
                                  flags=re.M)
            if anchor not in {_slug(h) for h in headings}:
                problems.append(f"{page.name}: {target}: no such heading")
    return problems


def test_readme_links_point_to_existing_files(text):
    problems = _link_problems(README)
    for span in SPAN.findall(FENCE.sub("", text)):  # quoted repository paths, e.g. `docs/x.md`
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)+/?", span) and not span.startswith(OUTPUT_PREFIXES):
            if not (ROOT / span).exists():
                problems.append(f"README.md: `{span}`: no such file")
    assert not problems, "\n".join(problems)


def test_docs_links_point_to_existing_files():
    problems = [p for page in sorted((ROOT / "docs").glob("*.md")) for p in _link_problems(page)]
    assert not problems, "\n".join(problems)
