"""What the commands that work through many images share: the image files named on the command line, a progress
bar only a terminal sees, output lines that do not tear that bar, and the exit code of a batch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cxrscreen.data.defaults import IMAGE_SUFFIXES
from cxrscreen.errors import ConfigError

if TYPE_CHECKING:  # tqdm and the image code are imported when a command runs, not to build the parser
    from tqdm import tqdm


def image_files(paths: list[str]) -> list[Path]:
    """The image files of ``paths`` (folders recursed, read by content); says on stderr how many files of each
    folder were skipped as not images. A :class:`ConfigError` when there is none."""
    from cxrscreen.data.imageio import list_image_files

    listing = list_image_files(paths)
    for folder, count in listing.skipped.items():
        say(f"{folder}: skipped {count} file(s) that are not PNG, JPEG or DICOM", sys.stderr)
    if not listing.files:
        raise ConfigError(f"{', '.join(paths)}: no PNG, JPEG or DICOM files found")
    return listing.files


def only_missing_files(files: list[Path]) -> bool:
    """True when none of ``files`` exists, after one ``PATH: file not found`` line each on stderr (as a batch reports
    a file it cannot read): the command exits 2 before it loads, or prepares, a model for nothing."""
    if any(path.exists() for path in files):
        return False
    for path in files:
        say(f"{path}: file not found", sys.stderr)
    return True


def progress(total: int, desc: str) -> tqdm:
    """A bar on stderr while it is a terminal (``disable=None``); piped or logged runs show none."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)


def say(line: str, stream: TextIO) -> None:
    """Print ``line`` to ``stream`` without tearing a progress bar on the same terminal."""
    from tqdm import tqdm

    tqdm.write(line, file=stream)


class UniqueStems:
    """Output name stems, one per input file: ``<stem>``, then ``<stem>-2``, ... when folders repeat a name."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, path: Path) -> str:
        # Only an image suffix is dropped: PACS exports name files by UID (1.2.840.113619.2.55.3.4), all dots.
        stem = path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name
        count = self.seen.get(stem, 0) + 1
        self.seen[stem] = count
        return stem if count == 1 else f"{stem}-{count}"


def batch_exit_code(done: int, failed: int) -> int:
    """0 when every file worked; 1 when some of a batch failed (the others done); 2 when none could be used,
    which is a user mistake (a missing or unreadable path), as the README says."""
    if not failed:
        return 0
    return 1 if done else 2
