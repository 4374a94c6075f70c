"""What every dataset source shares: the registry, the scan result, and a loop-safe image lister.

A source is one small module that registers a :class:`Source`: ``detect(path)`` says whether (and where) the
path holds its layout, ``scan(root, frontal_only)`` lists the collection's images as :class:`Record`. Labels are
not filtered here: every image is yielded with its canonical finding (or its raw label when the alias table does
not know it) and :func:`cxrscreen.data.sources.load_dataset` maps them onto the task's classes, counting drops.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from cxrscreen.data.imageio import looks_like_image_file
from cxrscreen.data.labels import canonical_finding
from cxrscreen.data.records import Record
from cxrscreen.errors import DatasetLayoutError

# Folders that sit inside class folders of published collections and hold no X-rays of that class.
IGNORED_FOLDERS = frozenset({"masks", "__macosx"})
# How many file names a layout that is recognised by its file-naming convention looks at.
SAMPLED_NAMES = 5


@dataclass
class SourceScan:
    """Everything one source found under one path: images, and what it left out (``excluded``: reason -> count)."""

    records: list[Record] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    """One collection layout. ``detect`` returns the collection's root (maybe below ``path``) or None."""

    name: str
    detect: Callable[[Path], Path | None]
    scan: Callable[[Path, bool], SourceScan]
    description: str


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add a layout to the registry; detection tries sources in registration order (most specific first)."""
    SOURCES[source.name] = source
    return source


def finding_label(raw_label: str) -> str:
    """Canonical finding for a raw label, or the normalised raw label when the alias table does not know it.

    Keeping unknown labels lets ``--label-map RAW=CLASS`` use them; without such a mapping they are dropped
    (and counted) by the task's :class:`~cxrscreen.data.labels.LabelSet`.
    """
    return canonical_finding(raw_label) or raw_label.strip().lower()


def is_image_file(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.is_file() and looks_like_image_file(Path(entry.path))


class ImagePaths(Sequence[Path]):
    """Image files as a sequence of paths, kept as strings: a :class:`Path` is made as each is read, so a folder of
    100k images never holds 100k :class:`Path` objects at once (their parts would stay behind as scattered
    garbage among the records made from them)."""

    def __init__(self, paths: list[str]):
        self._paths = paths

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ImagePaths(self._paths[index])
        return Path(self._paths[index])

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented


def list_images(folder: Path, recursive: bool = False, problems: list[str] | None = None) -> ImagePaths:
    """Image files under ``folder`` (sorted as paths are, absolute), skipping ``masks/`` and hidden folders.

    Folder symlinks are followed but each real folder is visited once, so a symlink loop cannot hang the scan;
    unreadable folders are appended to ``problems`` as one-line notes instead of raising.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    pending = [Path(os.path.abspath(folder))]
    while pending:
        current = pending.pop()
        try:
            stat = current.stat()
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(current) as entries:
                for entry in entries:
                    if is_image_file(entry):
                        found.append(entry.path)
                    elif recursive and entry.is_dir() and not entry.name.startswith("."):
                        if entry.name.lower() not in IGNORED_FOLDERS:
                            pending.append(Path(entry.path))
        except OSError as exc:
            if problems is not None:
                problems.append(f"{current}: cannot read folder ({exc.strerror or exc}), skipped")
    # The order of Path objects (part by part): a separator sorts before any character of a name.
    found.sort(key=lambda path: path.replace(os.sep, "\0"))
    return ImagePaths(found)


def subfolders(folder: Path) -> list[Path]:
    """Visible subfolders of ``folder`` (sorted), without ``masks/`` and ``__MACOSX``; [] when unreadable."""
    try:
        with os.scandir(folder) as entries:
            return sorted(
                Path(os.path.abspath(e.path))
                for e in entries
                if not e.name.startswith(".") and e.name.lower() not in IGNORED_FOLDERS and e.is_dir()
            )
    except OSError:
        return []


def has_images(folder: Path) -> bool:
    """True when ``folder`` directly holds at least one image file."""
    try:
        with os.scandir(folder) as entries:
            return any(is_image_file(e) for e in entries)
    except OSError:
        return False


def named_images_folder(path: Path, pattern: re.Pattern[str], image_folders: tuple[str, ...] = ("images",)) -> Path | None:
    """The folder holding images whose stems match ``pattern``: ``path`` itself or one of its ``image_folders``.

    Only the first few file names are looked at (detection must stay cheap); None when no folder has such names.
    """
    for folder in (path, *(path / name for name in image_folders)):
        if folder.is_dir() and any(pattern.match(image.stem) for image in list_images(folder)[:SAMPLED_NAMES]):
            return folder
    return None


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV file as dicts (keys stripped and lower-cased).

    Raises :class:`DatasetLayoutError` naming the file and the problem: unreadable, not UTF-8 (with the line),
    malformed, or missing one of the ``required`` columns.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetLayoutError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetLayoutError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8") from None
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in columns]
        if missing:
            found = ", ".join(c for c in columns if c) or "none"
            raise DatasetLayoutError(f"{path}: missing column(s) {', '.join(missing)} (found: {found})")
        return [
            {key.strip().lower(): (value or "").strip() for key, value in row.items() if key is not None}
            for row in reader
        ]
    except csv.Error as exc:
        raise DatasetLayoutError(f"{path}: malformed CSV ({exc})") from None
