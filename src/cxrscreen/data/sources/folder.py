"""Any folder-per-class tree: ``<root>/<class>/**/<file>`` (e.g. the TB Chest Radiography Database).

The class folder's name is the raw label (mapped through the alias table, or ``--label-map NAME=CLASS``);
``masks/`` and hidden folders are skipped. The source is the root folder's name, or the collection's short name
for collections it is known to be (``tb_db``). Patients are unknown.
"""

from __future__ import annotations

from pathlib import Path

from cxrscreen.data.records import Record
from cxrscreen.data.sources.base import (
    Source,
    SourceScan,
    finding_label,
    has_images,
    list_images,
    register_source,
    subfolders,
)

NAME = "folder"
KNOWN_COLLECTIONS = {"tb_chest_radiography_database": "tb_db"}


def holds_class_images(folder: Path) -> bool:
    return has_images(folder) or has_images(folder / "images")


def detect(path: Path) -> Path | None:
    return path if any(holds_class_images(folder) for folder in subfolders(path)) else None


def collection_name(root: Path) -> str:
    return KNOWN_COLLECTIONS.get(root.name.lower(), root.name)


def scan(root: Path, frontal_only: bool = True) -> SourceScan:
    result = SourceScan()
    source = collection_name(root)
    unlabelled = len(list_images(root))
    if unlabelled:
        result.excluded["images outside a class folder"] += unlabelled
    for folder in subfolders(root):
        for path in list_images(folder, recursive=True, problems=result.notes):
            result.records.append(Record(str(path), finding_label(folder.name), folder.name, source))
    return result


register_source(Source(NAME, detect, scan, "folder per class: <root>/<class>/<file>"))
