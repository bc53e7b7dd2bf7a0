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
  7  an output that cannot be written: no permission, a read-only or full file system, a path
     under a file (``OutputUnwritableError``; also a full or read-only disk met while writing)
==== ==============================================================================

``--verbose`` (or ``CONSENSUS_JAX_VERBOSE=1`` in the environment) shows the traceback of these
errors too. Each subclasses the built-in error it refines (``ValueError``, ``FileNotFoundError``,
``FileExistsError``, ``FloatingPointError``), so library callers may catch either.
"""

from __future__ import annotations

import difflib
import errno
import functools
import os
import re
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


class OutputUnwritableError(UserError, OSError):
    """An output that cannot be written (no permission, read-only or full file system)."""

    exit_code = 7


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
        except Exception as err:  # noqa: BLE001 - a full disk met anywhere, e.g. in a checkpoint
            disk = disk_error(err)
            if disk is None or verbose():
                raise
            return report(OutputUnwritableError(
                f"Writing {disk.filename or 'an output'} failed: {disk.strerror}. Free some space "
                "(or make the folder writable) and run the command again; a training run "
                "resumes from its last complete checkpoint."))
    return wrapped


def disk_error(err: BaseException | None) -> OSError | None:
    """The OSError of a full or read-only file system behind ``err`` (itself, its cause or
    its context), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return err
        err = err.__cause__ or err.__context__
    return None


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


#: Flags that ask for the usage (absl's spellings, and ``-h``); ``helpfull`` lists every flag.
HELP_FLAGS = frozenset({"help", "h", "?", "helpshort", "helpfull"})


def help_requested(argv: Sequence[str]) -> str | None:
    """The help flag (a name of ``HELP_FLAGS``) among ``argv[1:]`` before a ``--``, or None.

    ``--help``, ``-help``, ``-h`` and ``--help=true`` ask; ``--help=false`` does not.
    """
    for arg in argv[1:]:
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in HELP_FLAGS and (not eq or value.lower() in ("true", "t", "1", "yes")):
            return name
    return None


def exit_if_help(flag_values: Any, argv: Sequence[str]) -> None:
    """Prints the usage (the command's docstring and its flags with their help texts) on stdout
    and ends the process with status 0 when ``argv`` asks for help (``help_requested``).

    absl's own help flags exit with status 1 and know only its global flags; this serves every
    command, those with a ``FlagValues`` of their own too, before any flag is parsed (so that
    required flags need not be given).
    """
    asked = help_requested(argv)
    if asked is None:
        return
    from absl import app, flags  # noqa: PLC0415

    full = asked == "helpfull"
    if flag_values is flags.FLAGS:
        app.usage(shorthelp=not full, writeto_stdout=True)
        if not full:
            print("\nTry --helpfull to see every flag (those of absl, JAX and TFDS too).")
    else:
        main = sys.modules.get("__main__")
        main_file = getattr(main, "__file__", None)
        same = bool(argv) and main_file is not None and \
            os.path.realpath(main_file) == os.path.realpath(argv[0])
        doc = (main.__doc__ or "") if same else ""
        print(doc.rstrip() or f"usage: {argv[0] if argv else 'the command'} [flags]")
        print("\nflags:\n" + flag_values.get_help())
    sys.stdout.flush()
    raise SystemExit(0)


def config_file_error(err: BaseException, argv: Sequence[str]) -> ConfigError | None:
    """A ConfigError naming the ``--config`` file and the line where loading it failed (a syntax
    error, an exception at import or inside ``get_config``), or None when ``err`` did not come
    from that file.

    ml_collections lets a syntax or import error of the file propagate as it is, and re-raises a
    ValueError / TypeError of ``get_config`` with the whole traceback as its message: the
    original error is found in the exception's chain.
    """
    import traceback  # noqa: PLC0415

    spec = next((a.split("=", 1)[1] for a in argv if re.fullmatch(r"--?config=.*", a)), None)
    if spec is None:
        return None
    path = os.path.realpath(spec.partition(":")[0])
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, SyntaxError) and cause.filename \
                and os.path.realpath(cause.filename) == path:
            return ConfigError(f"--config={spec}: {cause.filename}, line {cause.lineno}: "
                               f"{type(cause).__name__}: {cause.msg}. Fix the file (python "
                               f"{cause.filename} shows the same error).")
        frames = [f for f in traceback.extract_tb(cause.__traceback__)
                  if os.path.realpath(f.filename) == path]
        if frames and "Error whilst parsing config file" not in str(cause):
            detail = (str(cause).strip().splitlines() or [""])[0]
            where = frames[-1]
            return ConfigError(f"--config={spec}: loading the config failed at {where.filename}, "
                               f"line {where.lineno} (in {where.name}): "
                               f"{type(cause).__name__}: {detail}. Fix the config file.")
        cause = cause.__cause__ or cause.__context__
    return None


def parse_flags(flag_values: Any, argv: list[str]) -> list[str]:
    """``flag_values(argv)``; a bad flag, a ``--config`` file that does not load or an override
    of an unknown ``--config.*`` key raises ConfigError (with the file's line or the closest key)
    instead of absl's usage dump or a traceback. ``--help`` (``-h``, ``--helpfull``) prints the
    usage and exits with status 0 (``exit_if_help``). Turns tracebacks on when ``--verbose`` is
    given."""
    from absl import flags  # noqa: PLC0415

    set_verbose(_asks_verbose(argv))
    exit_if_help(flag_values, argv)
    try:
        rest = flag_values(argv)
        if "config" in flag_values and flag_values["config"].present:
            # A file that failed to load gives a placeholder that raises on first use: use it
            # now, inside this try.
            getattr(flag_values["config"].value, "keys", None)
    except flags.Error as err:
        raise config_file_error(err, argv) or \
            ConfigError(f"{err}. Pass --helpfull to see the flags.") from None
    except (AttributeError, KeyError) as err:  # ml_collections: an override of an unknown key
        in_file = config_file_error(err, argv)
        if in_file is not None:  # ... unless the config file itself raised it
            raise in_file from None
        overrides = [a.split("=", 1)[0][len("--config."):] for a in argv[1:]
                     if a.startswith("--config.")]
        check_overrides(_load_config_flag(argv), overrides)
        raise ConfigError(f"A --config.* setting is not in the config ({err}).") from None
    except OSError as err:  # ml_collections: a config file that cannot be loaded
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
        detail = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
        raise ConfigError(f"--config={spec}: cannot load the config file: {detail}") from None
    except Exception as err:  # a syntax error or an exception raised by the config file
        in_file = config_file_error(err, argv)
        if in_file is None:
            raise
        raise in_file from None
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
