"""Small trees of the real data for tests: symlinks to ../shared/data, never copies.

A module of its own, not conftest.py: several test folders have a conftest.py, so ``from conftest import ...``
resolves to whichever was imported last.
"""

from __future__ import annotations

from pathlib import Path


def link_subset(src_root: Path, dst_root: Path, per_class: int, pattern: str = "*/images/*.jpg") -> Path:
    """Build a small copy of a folder layout by symlinking the first ``per_class`` files of each folder."""
    by_folder: dict[Path, list[Path]] = {}
    for path in sorted(src_root.glob(pattern)):
        by_folder.setdefault(path.parent, []).append(path)
    for folder, files in by_folder.items():
        target = dst_root / folder.relative_to(src_root)
        target.mkdir(parents=True, exist_ok=True)
        for path in files[:per_class]:
            (target / path.name).symlink_to(path)
    return dst_root
