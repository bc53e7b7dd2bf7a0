"""The project's own errors, and the boundary every command runs inside.

A command (train.py, evaluate.py, ablation.py, demo.py, ``python -m data_prep.ct`` / ``.mri``,
``python -m consensus_jax.export`` / ``.denoise``) that meets one of the errors below prints one
message (what, where, what to do) and exits with the error's status:

==== ==============================================================================
  0  success
  1  an unexpected error: a bug or an environment problem; the traceback is shown
  2  a bad command line or config value (``ConfigError``)
  3  bad input data: a file, field or value that cannot be used (``InputError``)
  4  a run folder, checkpoint or exported model that cannot be used (``RunError``)
  5  an output that exists and would be replaced (``OutputExistsError``)
  6  training stopped on a non-finite loss (``TrainingDiverged``)
==== ==============================================================================

``--verbose`` (or ``CONSENSUS_JAX_VERBOSE=1`` in the environment) shows the traceback of these
errors too. Each subclasses the built-in error it refines (``ValueError``, ``FileNotFoundError``,
``FileExistsError``, ``FloatingPointError``), so library callers may catch either.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: Environment variable: a non-empty value other than 0 shows tracebacks of the errors below.
VERBOSE_ENV = "CONSENSUS_JAX_VERBOSE"


class UserError(Exception):
    """An error the user can fix; its message says what, where and what to do."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A command-line flag or config value out of range, unknown or inconsistent."""

    exit_code = 2


class InputError(UserError, ValueError):
    """Input data (DICOM, NIfTI, NumPy, HDF5, a dataset) that cannot be used."""

    exit_code = 3


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that does not exist or holds nothing usable."""


class RunError(UserError, ValueError):
    """A training workdir, checkpoint or exported model that cannot be used as asked."""

    exit_code = 4


class MissingRunError(RunError, FileNotFoundError):
    """A workdir, checkpoint or exported model that does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output that exists and would be replaced."""

    exit_code = 5


class TrainingDiverged(UserError, FloatingPointError):
    """Training met a non-finite loss and stopped (its checkpoints are kept)."""

    exit_code = 6


def verbose() -> bool:
    """Whether tracebacks of the project's own errors are shown."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _asks_verbose(argv: Sequence[str]) -> bool:
    return any(a in ("--verbose", "--verbose=true", "--verbose=1") for a in argv)


def set_verbose(on: bool) -> None:
    """Turns tracebacks on for this process and the commands it starts."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


def report(err: UserError) -> int:
    """Prints ``err`` as one message on stderr; returns its exit status."""
    print(f"Error: {err}", file=sys.stderr)
    print(f"(exit status {err.exit_code}; --verbose or {VERBOSE_ENV}=1 shows the traceback)",
          file=sys.stderr)
    return err.exit_code


def boundary(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a command's ``main``: one of the project's own errors is printed as one message
    and its exit status returned (``sys.exit(main())`` / ``absl.app.run`` end the process with
    it); any other exception propagates with its traceback."""
    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            if verbose():
                raise
            return report(err)
    return wrapped


def closest(name: str, choices: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for the choice closest to ``name``, or an empty string."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def config_keys(config: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a (nested) ConfigDict, groups included."""
    for name in config.keys():
        key = f"{prefix}{name}"
        yield key
        value = config[name]
        if hasattr(value, "keys") and hasattr(value, "items"):
            yield from config_keys(value, key + ".")


def check_overrides(config: Any, overrides: Sequence[str], flag: str = "config") -> None:
    """Raises ConfigError for a ``--<flag>.a.b=v`` override whose key ``a.b`` is not in
    ``config``, suggesting the closest key and listing the valid ones beside it."""
    known = list(config_keys(config))
    for key in overrides:
        if key in known:
            continue
        candidates = [k for k in known if not key.startswith(k + ".")]  # not its own groups
        group = key.rpartition(".")[0]
        where, names = (group, sorted(_group(config, group).keys())) if group in known else \
            ("the top level", sorted(config.keys()))
        raise ConfigError(f"--{flag}.{key}: no such setting in the config."
                          f"{closest(key, candidates)} Valid keys under {where}: "
                          f"{', '.join(names)}.")


def _group(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def define_verbose_flag(flag_values: Any = None) -> None:
    """Defines ``--verbose`` in ``flag_values`` (absl's global flags by default)."""
    from absl import flags  # noqa: PLC0415 - only the commands need absl

    fv = flags.FLAGS if flag_values is None else flag_values
    if "verbose" not in fv:
        flags.DEFINE_bool("verbose", False, "Show the traceback of the project's own errors "
                          f"(or set {VERBOSE_ENV}=1).", flag_values=fv)


def parse_flags(flag_values: Any, argv: list[str]) -> list[str]:
    """``flag_values(argv)``; a bad flag or an override of an unknown ``--config.*`` key raises
    ConfigError (with the closest key) instead of absl's usage dump or a traceback. Turns
    tracebacks on when ``--verbose`` is given."""
    from absl import flags  # noqa: PLC0415

    set_verbose(_asks_verbose(argv))
    try:
        rest = flag_values(argv)
        if "config" in flag_values and flag_values["config"].present:
            # A file that failed to load gives a placeholder that raises on first use: use it
            # now, inside this try.
            getattr(flag_values["config"].value, "keys", None)
    except flags.Error as err:
        raise ConfigError(f"{err}. Pass --helpfull to see the flags.") from None
    except (AttributeError, KeyError) as err:  # ml_collections: an override of an unknown key
        overrides = [a.split("=", 1)[0][len("--config."):] for a in argv[1:]
                     if a.startswith("--config.")]
        check_overrides(_load_config_flag(argv), overrides)
        raise ConfigError(f"A --config.* setting is not in the config ({err}).") from None
    except OSError as err:  # ml_collections: a config file that cannot be loaded
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
        detail = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
        raise ConfigError(f"--config={spec}: cannot load the config file: {detail}") from None
    if "verbose" in flag_values:
        set_verbose(flag_values.verbose)
    return rest


def run_absl(main: Callable[[list[str]], Any], argv: list[str] | None = None,
             flags_parser: Callable[[list[str]], list[str]] | None = None) -> None:
    """``absl.app.run(main)`` inside the boundary, with a ``--verbose`` flag: a bad flag, an
    unknown ``--config.*`` key or one of the errors above ends the process with one message."""
    from absl import app, flags  # noqa: PLC0415

    define_verbose_flag()

    def parser(args: list[str]) -> list[str]:
        set_verbose(_asks_verbose(args))
        parse = flags_parser or (lambda a: parse_flags(flags.FLAGS, a))
        parsed = boundary(parse)(args)
        if isinstance(parsed, int):  # the error's exit status: the message is printed
            sys.exit(parsed)
        return parsed

    app.run(boundary(main), argv=argv, flags_parser=parser)


def _load_config_flag(argv: list[str]) -> Any:
    """The config file named by ``--config=path[:arg]`` in ``argv``, loaded as absl would."""
    import importlib.util  # noqa: PLC0415

    spec_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec_arg is None:
        raise ConfigError("--config.* settings need --config=<file>.")
    path, _, arg = spec_arg.partition(":")
    spec = importlib.util.spec_from_file_location("_config_for_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
