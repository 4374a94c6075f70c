"""Shared fixtures: the real X-rays in ../shared/data (never copied into the repo) and small trees built from them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CXRSCREEN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real data; the suite needs it (CI lays ../shared beside the clone)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; set CXRSCREEN_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def radiography_root(shared_data: Path) -> Path:
    return shared_data / "COVID-19_Radiography_Dataset"


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


@pytest.fixture(scope="session")
def small_radiography(tmp_path_factory: pytest.TempPathFactory, radiography_root: Path) -> Path:
    """12 images per class of the Radiography DB, in its published layout (symlinks to the real files)."""
    return link_subset(radiography_root, tmp_path_factory.mktemp("radiography") / "COVID-19_Radiography_Dataset", 12)


@pytest.fixture
def copy_file(tmp_path: Path):
    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copyfile(src, dst)
        return dst

    return _copy
