"""COVID-19 Radiography Database (Kaggle; Chowdhury et al. 2020, Rahman et al. 2021).

Layout: ``<Class>/images/<Class>-<n>.png`` (``masks/`` beside ``images/`` ignored), or the older flat
``<Class>/<Class> (<n>).png``. Classes: COVID, Normal, Viral Pneumonia, Lung_Opacity (older releases: COVID-19,
NORMAL). No patient ids are published, so patients are unknown.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrscreen.data.records import Record
from cxrscreen.data.sources.base import Source, SourceScan, finding_label, list_images, register_source, subfolders

NAME = "radiography_db"
CLASS_FOLDERS = frozenset({"covid", "covid-19", "normal", "viral pneumonia", "lung_opacity"})


def class_image_folder(class_folder: Path) -> Path:
    """Where a class's images are: ``images/`` in the current release, the class folder itself in older ones."""
    images = class_folder / "images"
    return images if images.is_dir() else class_folder


def named_like_database(class_folder: Path) -> bool:
    """The database's own file naming: ``COVID-12.png`` or ``COVID (12).png``."""
    pattern = re.compile(rf"^{re.escape(class_folder.name)}( \(\d+\)|-\d+)$", re.IGNORECASE)
    return any(pattern.match(path.stem) for path in list_images(class_image_folder(class_folder))[:5])


def detect(path: Path) -> Path | None:
    folders = subfolders(path)
    if not folders or any(f.name.lower() not in CLASS_FOLDERS for f in folders):
        return None
    if any((f / "images").is_dir() or named_like_database(f) for f in folders):
        return path
    return None


def scan(root: Path, frontal_only: bool = True) -> SourceScan:
    result = SourceScan()
    for folder in subfolders(root):
        for path in list_images(class_image_folder(folder), problems=result.notes):
            result.records.append(Record(str(path), finding_label(folder.name), folder.name, NAME))
    return result


register_source(Source(NAME, detect, scan, "COVID-19 Radiography Database: <Class>/images/<file>"))
