"""What ``python -m data_prep.ct`` and ``python -m data_prep.mri`` share: the flags, the data config
(``configs/data/<modality>.py``) and its check against the builder's presets, build-or-reuse, the
split diagnostic report and the program skeleton.

The data config is an ``ml_collections`` file like the experiment configs: ``--config`` names a
preset, ``--config.<field>=<value>`` changes one of its fields, e.g.

  python -m data_prep.ct --config=configs/data/ct.py:quick --config.photons_per_ray=1e4 \
      --config.name=quick_i0_1e4

``--config=quick`` is short for ``--config=configs/data/<modality>.py:quick``. A config that
differs from its preset needs a new ``--config.name`` (not a preset's), so that datasets with
different settings never share a folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags, logging
from ml_collections import config_dict, config_flags

from consensus_jax import errors
from consensus_jax.errors import ConfigError, MissingInputError, UserError
from consensus_jax.workdir import atomic_write
from data_prep import check_reused_dataset

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRESET = "quick"
_FIELD_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclasses.dataclass(frozen=True)
class Modality:
    """One data_prep program: its builder module and the steps that differ between modalities.

    Attributes:
      name: "ct" or "mri"; the data config is ``configs/data/<name>.py``.
      builder_module: module with ``Builder``, ``PRESETS`` and ``list_patients``.
      split_report: builder -> the split diagnostic (a JSON-able dict; cached by ``report``).
      describe: the split diagnostic -> the line(s) printed after the build.
      define_flags: defines the program's own flags on the given FlagValues.
      before_build: (builder config, flags) -> True when the program is done without building
        (CT's --calibrate).
      after_build: (builder, manual_dir, flags) after the report (CT's TV baselines).
      check_sources: list the patients before building, so that missing files or packages stop
        with a message before TFDS starts writing (cheap for MRI; CT's would read every volume).
    """

    name: str
    builder_module: str
    split_report: Callable[[Any], dict]
    describe: Callable[[dict], str]
    define_flags: Callable[[flags.FlagValues], None] = lambda flag_values: None
    before_build: Callable[[Any, flags.FlagValues], bool] | None = None
    after_build: Callable[[Any, Path | None, flags.FlagValues], None] | None = None
    check_sources: bool = False

    @property
    def config_file(self) -> Path:
        return ROOT / "configs" / "data" / f"{self.name}.py"

    def builder_lib(self):
        return importlib.import_module(self.builder_module)


# ------------------------------------------------------------------------------------------
# Data configs: builder presets as ConfigDicts, and back.


def data_fields(config_cls: type) -> list[dataclasses.Field]:
    """The dataset settings of a builder config class: its fields less tfds.core.BuilderConfig's
    (name, version, description, release_notes, supported_versions, tags)."""
    import tensorflow_datasets as tfds

    internal = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return [f for f in dataclasses.fields(config_cls) if f.name not in internal]


def _field_type(field: dataclasses.Field) -> type:
    """int / float / str / bool of an annotation such as ``float | None``."""
    if isinstance(field.type, type):
        return field.type
    names = [t.strip() for t in str(field.type).split("|") if t.strip() != "None"]
    return _FIELD_TYPES[names[0]]


def preset_config(presets: dict[str, Any], preset: str) -> ml_collections.ConfigDict:
    """``presets[preset]`` as a ConfigDict: its name and dataset settings (``get_config`` of
    configs/data/*.py). None-valued fields are typed placeholders, so they can be overridden."""
    if preset not in presets:
        raise ConfigError(f"Unknown data preset {preset!r}: choose one of {sorted(presets)}, e.g. "
                          f"--config=quick.")
    builder_config = presets[preset]
    values: dict[str, Any] = {"name": builder_config.name}
    for field in data_fields(type(builder_config)):
        value = getattr(builder_config, field.name)
        values[field.name] = (config_dict.placeholder(_field_type(field)) if value is None
                              else value)
    return ml_collections.ConfigDict(values)


def builder_config(modality: Modality, config: ml_collections.ConfigDict,
                   preset: str | None = None):
    """The TFDS builder config of ``config``: the preset itself when ``config`` is a preset,
    else a new config of the preset's class, validated.

    A config named after a preset must have that preset's settings, and a config with a new name
    must differ from every preset: datasets with different settings never share a folder and no
    preset is built twice. ``preset``: the preset ``config`` was made from (its description
    names the changes); default: the preset of ``config.name`` or "quick".
    """
    presets = modality.builder_lib().PRESETS
    fields = [f.name for f in data_fields(type(presets[DEFAULT_PRESET]))]
    values = {k: config[k] for k in fields}

    def changes(name: str) -> dict[str, tuple[Any, Any]]:
        return {k: (getattr(presets[name], k), v) for k, v in values.items()
                if getattr(presets[name], k) != v}

    name = config.name
    base = preset if preset in presets else name if name in presets else DEFAULT_PRESET
    # The values first, whatever the name: one out of range is named with its allowed range
    # (not only as a change of the preset), and never reaches the builder.
    check_values(dataclasses.replace(presets[base], **values))
    if name in presets:
        changed = changes(name)
        if changed:
            lines = "\n".join(f"  {k}: preset {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(
                f"--config: these settings differ from the {name!r} preset:\n{lines}\nGive the "
                f"changed config a new name (not one of {sorted(presets)}), e.g. "
                f"--config.name={name}_{next(iter(changed))}, so datasets with different "
                "settings never mix.")
        return presets[name]
    same = [p for p in presets if not changes(p)]
    if same:
        raise ConfigError(f"--config.name={name}: the settings are the {same[0]!r} preset's; drop "
                          f"--config.name to build or reuse that preset.")
    base = preset if preset in presets else DEFAULT_PRESET
    changed = {k: b for k, (_, b) in changes(base).items()}
    return dataclasses.replace(presets[base], name=name, description=f"{base} with {changed}",
                               **values)


def check_values(config) -> None:
    """Raises ConfigError unless the builder config's values are in range (its ``validate``,
    which names the ``--config.<field>``) and make a scan (its ``metadata``)."""
    try:
        if hasattr(config, "validate"):
            config.validate()
        config.metadata()
    except ConfigError:
        raise
    except ValueError as err:  # a range check of a class the config builds (e.g. the coils)
        raise ConfigError(f"--config: {err} Change that --config.<field> value.") from None


# ------------------------------------------------------------------------------------------
# Flags.


def are_positive_numbers(values: Sequence[str]) -> bool:
    """Validator of a list flag of sweep values (photons, SNRs): positive numbers, at least one."""
    try:
        return bool(values) and all(float(v) > 0 for v in values)
    except ValueError:
        return False


def define_calibration_flags(flag_values: flags.FlagValues, sweep: str, default: list[str],
                             what: str, example: str) -> None:
    """``--calibrate`` (print ``what`` for each value of ``--<sweep>``, build nothing),
    ``--<sweep>`` (positive numbers, e.g. ``example``) and ``--calibration_slices``."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_bool("calibrate", False, f"Only print {what} for a sweep of --{sweep}; builds "
                      "nothing.", **fv)
    flags.DEFINE_list(sweep, default, f"The values of the --calibrate sweep, e.g. "
                      f"--{sweep}={example}.", **fv)
    flags.DEFINE_integer("calibration_slices", None, "Calibrate on the first N chosen slices of "
                         "each patient (default: all of them).", **fv)
    flags.register_validator(sweep, are_positive_numbers, f"--{sweep}: positive numbers "
                             f"separated by commas, e.g. --{sweep}={example}.", **fv)


def calibrate_before_build(calibrate: Callable[[Any, list[float], int | None], Any],
                           sweep: str) -> Callable[[Any, flags.FlagValues], bool]:
    """A ``Modality.before_build`` that runs ``calibrate(config, values, slices)`` and stops the
    program when ``--calibrate`` is given (flags of ``define_calibration_flags``)."""
    def before_build(config, flag_values: flags.FlagValues) -> bool:
        if flag_values.calibrate:
            calibrate(config, [float(v) for v in flag_values[sweep].value],
                      flag_values.calibration_slices)
        return flag_values.calibrate
    return before_build


def expand_config_arg(modality: Modality, argv: Sequence[str]) -> list[str]:
    """``--config=<preset>`` (no file) -> ``--config=configs/data/<modality>.py:<preset>``."""
    out = list(argv)
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if eq and re.fullmatch(r"--?config", flag) and re.fullmatch(r"\w+", value):
            out[i] = f"{flag}={modality.config_file}:{value}"
        elif i and re.fullmatch(r"--?config", out[i - 1]) and re.fullmatch(r"\w+", arg):
            out[i] = f"{modality.config_file}:{arg}"
    return out


def define_flags(modality: Modality, flag_values: flags.FlagValues,
                 argv: Sequence[str]) -> None:
    """The flags of every data_prep program and the modality's own, on ``flag_values``.

    ``argv``: the command line the flags will be parsed from (config_flags reads the
    ``--config.<field>`` overrides from it).
    """
    config_flags.DEFINE_config_file(
        "config", f"{modality.config_file}:{DEFAULT_PRESET}",
        f"Data config: configs/data/{modality.name}.py:<preset> or just <preset> (one of the "
        f"builder's presets), then --config.<field>=<value> to change a field (needs a new "
        "--config.name).", flag_values=flag_values, lock_config=True, sys_argv=list(argv))
    flags.DEFINE_string("data_dir", "data/tfds", "TFDS data folder.", flag_values=flag_values)
    flags.DEFINE_string("manual_dir", None, "Folder of your own data (the configs that read it).",
                        flag_values=flag_values)
    modality.define_flags(flag_values)


def _preset_of(flag_values: flags.FlagValues) -> str:
    """The text after ':' in --config (the preset get_config was called with)."""
    _, sep, preset = flag_values["config"].config_filename.partition(":")
    return preset if sep else DEFAULT_PRESET


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """``flag_values(argv)``; a bad flag or a config file that does not load stops with its
    message, without a traceback. ``--help`` (``-h``, ``--helpfull``) prints the usage and exits
    with status 0."""
    errors.exit_if_help(flag_values, argv)
    try:
        return flag_values(list(argv))
    except flags.Error as err:
        cause = err
        # config_flags re-raises get_config's errors with the traceback in the message: report
        # the original error (e.g. an unknown preset) instead.
        while "Error whilst parsing config file" in str(cause) and cause.__context__:
            cause = cause.__context__
        if cause is err or isinstance(cause, UserError):
            message = str(err) if cause is err else f"--config: {cause}"
        else:  # a bug in a config file of the user's: name its line
            raise errors.config_file_error(cause, argv) or \
                ConfigError(f"--config: {cause}") from None
    except (AttributeError, KeyError) as err:  # config_flags: --config.<not a field>
        in_file = errors.config_file_error(err, argv)
        if in_file is not None:  # ... unless the config file itself raised it
            raise in_file from None
        field = str(err).strip("'\"")
        message = f"--config.{field}: the data config has no field {field!r}."
    except Exception as err:  # a syntax error or an exception at import of the config file
        in_file = errors.config_file_error(err, argv)
        if in_file is None:
            raise
        raise in_file from None
    raise ConfigError(f"{message}\nPass --helpfull to see the flags.") from None


# ------------------------------------------------------------------------------------------
# Build, report, program.


def build(modality: Modality, config, data_dir: str | Path, manual_dir: Path | None):
    """Builds (or reuses) the dataset; returns the builder."""
    import tensorflow_datasets as tfds

    from consensus_jax.input_pipeline import import_tensorflow

    lib = modality.builder_lib()
    import_tensorflow()
    builder = lib.Builder(config=config, data_dir=str(data_dir))
    if builder.is_prepared():
        check_reused_dataset(builder.data_dir, config.metadata())
        print(f"Reusing the finished dataset in {builder.data_dir}.")
        return builder
    if modality.check_sources:
        try:
            # Checks the sources (files, packages) before TFDS starts writing.
            lib.list_patients(config, manual_dir)
        except UserError as err:  # bad files keep their type (and exit status)
            raise type(err)(f"--config={config.name}: {err}") from None
        except (FileNotFoundError, ImportError, ValueError) as err:
            raise ConfigError(f"--config={config.name}: {err}") from None
    t0 = time.time()
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir else None)
    created = _missing_folders(builder, Path(data_dir))
    try:
        builder.download_and_prepare(download_config=download_config)
    except BaseException:
        _remove_created(created)
        raise
    print(f"Built {builder.data_dir} in {time.time() - t0:.0f} s.")
    return builder


def _missing_folders(builder, data_dir: Path) -> list[tuple[Path, bool]]:
    """The folders a build of ``builder`` may create under ``data_dir`` (``data_dir`` too) that
    do not exist yet, deepest first, each with whether it is this build's own (True: removed
    whole after a failure) or shared with other builds (False: removed only when empty).

    TFDS writes the dataset into a temporary folder that it removes itself when the build fails,
    but leaves the folders around it: ``<data_dir>/<dataset>/<config>``, the dataset's
    ``.config``, ``downloads/extracted`` and ``data_dir`` itself.
    """
    version_dir = Path(builder.data_dir)
    config_dir = version_dir.parent
    dataset_dir = config_dir.parent
    candidates = [(version_dir, True), (config_dir, True), (dataset_dir / ".config", True),
                  (data_dir / "downloads" / "extracted", False), (data_dir / "downloads", False),
                  (dataset_dir, False), (data_dir, False)]
    return [(path, own) for path, own in candidates if not path.exists()]


def _remove_created(created: list[tuple[Path, bool]]) -> None:
    """Removes what a failed build created (``_missing_folders``): never a folder that existed
    before it, nor a shared one that holds anything (another build's output)."""
    import shutil

    for path, own in created:
        if not path.is_dir() or path.is_symlink():
            continue
        if own:
            shutil.rmtree(path, ignore_errors=True)
        elif not any(path.iterdir()):
            path.rmdir()


def report(builder, make: Callable[[Any], dict], name: str = "split_diagnostic.json") -> dict:
    """The JSON report ``name`` of the dataset folder: read when there, else ``make(builder)``,
    written whole (never half a file) and returned."""
    path = Path(builder.data_dir) / name
    if path.exists():
        return json.loads(path.read_text())
    result = make(builder)
    atomic_write(path, json.dumps(result, indent=2))
    return result


def run(modality: Modality, flag_values: flags.FlagValues) -> int:
    """The program on parsed flags: config, build or reuse, split diagnostic, extras."""
    config = builder_config(modality, flag_values.config, _preset_of(flag_values))
    if modality.before_build and modality.before_build(config, flag_values):
        return 0
    manual_dir = Path(flag_values.manual_dir) if flag_values.manual_dir else None
    if manual_dir is not None and not manual_dir.is_dir():
        raise MissingInputError(f"--manual_dir {manual_dir} is not a folder.")
    builder = build(modality, config, flag_values.data_dir, manual_dir)
    print(modality.describe(report(builder, modality.split_report)))
    if modality.after_build:
        modality.after_build(builder, manual_dir, flag_values)
    print(f"Dataset ready: {builder.data_dir}")
    return 0


def main(modality: Modality, argv: Sequence[str] | None = None) -> int:
    """Runs the program in this process on ``argv`` (the arguments after the program name;
    default sys.argv[1:]), with flags of its own: callable again, e.g. from tests."""
    argv = expand_config_arg(modality, [f"data_prep.{modality.name}",
                                        *(sys.argv[1:] if argv is None else argv)])
    flag_values = flags.FlagValues()
    define_flags(modality, flag_values, argv)
    rest = parse_flags(flag_values, argv)
    if len(rest) > 1:
        raise ConfigError(f"Unexpected arguments: {rest[1:]}")
    return run(modality, flag_values)


def start(modality: Modality) -> None:
    """``python -m data_prep.<modality>``: an absl program on the global flags."""
    argv = expand_config_arg(modality, sys.argv)
    modality.builder_lib()  # defines TFDS's flags, which are not the program's
    before = set(flags.FLAGS)
    define_flags(modality, flags.FLAGS, argv)
    for name in set(flags.FLAGS) - before:  # key flags of the program: listed by --help
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

    def main_(rest: list[str]) -> int:
        if len(rest) > 1:
            raise ConfigError(f"Unexpected arguments: {rest[1:]}")
        logging.set_verbosity(logging.WARNING)  # app.run's default, INFO, shows TFDS's logs
        return run(modality, flags.FLAGS)

    errors.run_absl(main_, argv=argv, flags_parser=lambda args: parse_flags(flags.FLAGS, args))
