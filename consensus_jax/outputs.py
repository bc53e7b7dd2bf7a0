"""What export and denoise may write, and what ``--overwrite`` may replace.

Every output of these commands (a file, or a folder such as an exported model or a DICOM
series) is written whole or not at all: into a temporary name beside it, renamed into place when
complete. Beside it goes a record, ``.<name>.consensus-jax.json``, that names the command and
lists each file written with its SHA-256.

``--overwrite`` replaces an existing output only when that record says the same command wrote
it and every file is still as written. Anything else at the output path (a file or folder the
command did not write, one changed since, a symbolic link) is refused, and so is an output that
is, contains or lies inside the command's input, model or training workdir, with or without
``--overwrite``: ``OutputExistsError``, exit status 5, and nothing is touched.

An output that cannot be written (a read-only or full file system, a path under a file) is
refused before the work starts (``OutputUnwritableError``, exit status 7).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from consensus_jax.errors import OutputExistsError, OutputUnwritableError, disk_error

RECORD_SUFFIX = ".consensus-jax.json"
_CHUNK = 1 << 20


def record_path(output: Path) -> Path:
    """The record that proves ``output`` was written by one of the project's commands."""
    return output.parent / f".{output.name}{RECORD_SUFFIX}"


def sha256(path: Path) -> str:
    """SHA-256 (hex) of one file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(path: Path) -> dict[str, str]:
    """{relative name: SHA-256} of every file under a folder (hidden ones too), or {name: ...}
    of one file."""
    if path.is_file():
        return {path.name: sha256(path)}
    return {p.relative_to(path).as_posix(): sha256(p)
            for p in sorted(path.rglob("*")) if p.is_file() or p.is_symlink()}


def _clash(output: Path, protected: Mapping[str, Path | None], flag: str) -> None:
    out = output.resolve()
    for what, path in protected.items():
        if path is None:
            continue
        other = Path(path).resolve()
        if out == other:
            why = f"is the {what}"
        elif other in out.parents:
            why = f"lies inside the {what} {path}"
        elif out in other.parents:
            why = f"contains the {what} {path}"
        else:
            continue
        raise OutputExistsError(f"{flag} {output} {why}; writing there could destroy it. Choose "
                                f"an output outside the {what}.")


def why_not_replaceable(output: Path, command: str) -> str | None:
    """None when ``output`` is an earlier, unchanged output of ``command``; else why not."""
    if output.is_symlink():
        return "is a symbolic link"
    record = record_path(output)
    if not record.is_file():
        return f"was not written by {command} (there is no record {record.name} beside it)"
    try:
        stored = json.loads(record.read_text())
        written_by, files = stored["written_by"], dict(stored["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"has a record {record.name} that cannot be read"
    if written_by != command:
        return f"was written by {written_by}, not {command}"
    now = file_hashes(output)
    changed = sorted(set(now) ^ set(files)) + sorted(k for k in set(now) & set(files)
                                                      if now[k] != files[k])
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3
                                          else "")
        return f"has changed since {command} wrote it ({shown})"
    return None


def check_destination(output: str | Path, command: str, overwrite: bool,
                      protected: Mapping[str, Path | None], flag: str = "--output",
                      needed_bytes: int = 0) -> Path:
    """Refuses, before any work, an output that would clash with ``protected`` paths (e.g.
    {"input": ..., "model": ...}), an existing output that ``--overwrite`` may not replace, and a
    destination that cannot be written. Returns ``output`` as a Path."""
    output = Path(output)
    _clash(output, protected, flag)
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{output} exists; pass --overwrite to replace an earlier "
                                    f"output of {command}, or choose another {flag}.")
        reason = why_not_replaceable(output, command)
        if reason is not None:
            raise OutputExistsError(
                f"{output} exists and {reason}; --overwrite replaces only an unchanged earlier "
                f"output of {command}. Move or remove it yourself, or choose another {flag}.")
    check_writable(output, flag, needed_bytes)
    return output


def _existing_folder(output: Path, flag: str) -> Path:
    """The nearest existing folder that ``output`` would be created in."""
    for parent in output.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputUnwritableError(f"{flag} {output}: {parent} is a file, not a folder, "
                                            "so nothing can be written under it. Choose another "
                                            "path.")
            return parent
    raise OutputUnwritableError(f"{flag} {output}: no existing folder above it.")


def check_writable(output: Path, flag: str = "--output", needed_bytes: int = 0) -> None:
    """Refuses an ``output`` whose folder cannot be written (read-only, no permission, a path
    under a file) or lacks ``needed_bytes`` of free space, by trying to write there."""
    folder = _existing_folder(output, flag)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputUnwritableError(f"{flag} {output}: cannot write in {folder} "
                                    f"({err.strerror}). Choose a writable folder.") from None
    ensure_space(folder, needed_bytes, f"{flag} {output}")


def ensure_space(folder: Path, needed_bytes: int, what: str, kept: str = "") -> None:
    """Refuses to start writing ``needed_bytes`` in ``folder`` when its file system has less
    free space (``what`` names the output; ``kept`` says what is kept)."""
    if needed_bytes <= 0:
        return
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OutputUnwritableError(
            f"{what}: needs about {needed_bytes / 1e6:.1f} MB but {folder} has "
            f"{free / 1e6:.1f} MB free. Free some space (or choose another folder) and run the "
            f"command again.{(' ' + kept) if kept else ''}")


@contextlib.contextmanager
def write_output(output: str | Path, command: str, folder: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside ``output`` (a file name with the same suffixes, or with
    ``folder=True`` an empty folder) and, when the block succeeds, moves it into place and
    records it (``record_path``). An existing ``output`` is replaced only if
    ``why_not_replaceable`` allows it (checked again now: it may have changed meanwhile). A
    failure removes the temporary path and leaves ``output`` as it was."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private
    else:
        tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
        tmp = tmp.with_name(tmp.name + "".join(output.suffixes))
    aside = None
    try:
        try:
            yield tmp
        except OSError as err:
            if disk_error(err) is not None:
                raise OutputUnwritableError(f"Writing {output} failed: {err.strerror} "
                                            f"({err.filename or output.parent}). Nothing was "
                                            "replaced; free some space and run it again.") from err
            raise
        record = {"written_by": command, "name": output.name,
                  "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  "files": {(output.name if k == tmp.name else k): v
                            for k, v in file_hashes(tmp).items()}}
        if output.exists() or output.is_symlink():
            reason = why_not_replaceable(output, command)
            if reason is not None:
                raise OutputExistsError(f"{output} {reason} while it was being computed; it is "
                                        "left as it is. Choose another output.")
            aside = output.with_name(f".{output.name}.replaced-{os.getpid()}")
            os.replace(output, aside)
        try:
            os.replace(tmp, output)
        except OSError:
            if aside is not None:  # put the earlier output back
                os.replace(aside, output)
                aside = None
            raise
        rec = record_path(output)
        rec_tmp = rec.with_name(rec.name + ".tmp")
        rec_tmp.write_text(json.dumps(record, indent=1))
        os.replace(rec_tmp, rec)
    finally:
        for leftover in (tmp, aside):
            if leftover is None:
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            elif leftover.exists() or leftover.is_symlink():
                leftover.unlink()
