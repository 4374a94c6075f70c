"""Atomic file writes: a run directory never holds a half-written file. Files are created with the mode the user's
umask gives (as ``open`` would), and an error names the file asked for, never the hidden temporary one."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from cxrscreen.errors import OutputError

# Tries at a free temporary name: 32 random bits each, so a clash is already unlikely once.
NAME_TRIES = 100


def create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    """A new file ``.<name>.<random>.tmp`` in ``folder``, opened for writing. Unlike ``tempfile.mkstemp`` (always
    0600) it gets the mode a plain ``open`` gets, 0666 less the umask, so the file renamed into place has it too."""
    for _ in range(NAME_TRIES):
        path = folder / f".{name}.{os.urandom(4).hex()}.tmp"  # secrets.token_hex, without its import cost
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary file name for {name}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    ``fsync=False`` skips the fsync for caches whose readers validate entries: the rename still keeps other
    processes from seeing a half-written file, at a fraction of the cost on many small files. An ``OSError`` about
    the temporary file is raised as one about ``path`` (the file the user asked for).
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temporary(target.parent, target.name)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if exc.filename is None or str(exc.filename) in (str(tmp), str(target), str(target.parent)):
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def writable_folder(path: str | os.PathLike, option: str) -> Path:
    """Make the output folder ``path`` (and its parents) and check that a file can be created in it, before any
    work is done: :class:`OutputError` names ``option`` and ``path`` and says why not (a file there, no permission,
    a read-only file system)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder}: is a file, not a folder (give a folder for the output files)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"{option} {folder}: cannot write there ({exc.strerror or exc})") from exc
    return folder


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)

