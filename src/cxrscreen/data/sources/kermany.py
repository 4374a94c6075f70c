"""Kermany et al. pediatric pneumonia set (Cell 2018; Kaggle "chest-xray-pneumonia").

Layout: ``chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/<file>``. PNEUMONIA is split by file name into
bacterial and viral pneumonia (``person<P>_bacteria_<n>``, ``person<P>_virus_<n>``); the patient is ``person<P>``,
for normals ``IM-<P>`` or ``NORMAL2-IM-<P>``. The published split is kept in ``Record.extra["split"]``.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrscreen.data.records import Record
from cxrscreen.data.sources.base import Source, SourceScan, finding_label, list_images, register_source, subfolders

NAME = "kermany"
SPLITS = ("train", "test", "val")
CLASS_FOLDERS = ("NORMAL", "PNEUMONIA")
PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
NORMAL_NAME = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


def is_collection_root(path: Path) -> bool:
    return any((path / split / cls).is_dir() for split in SPLITS for cls in CLASS_FOLDERS)


def detect(path: Path) -> Path | None:
    """``chest_xray`` itself, or a folder whose only data folder is ``chest_xray`` (as the Kaggle archive unpacks)."""
    if is_collection_root(path):
        return path
    folders = subfolders(path)
    if len(folders) == 1 and folders[0].name.lower() == "chest_xray" and is_collection_root(folders[0]):
        return folders[0]
    return None


def parse_file_name(stem: str, class_folder: str) -> tuple[str, str | None]:
    """(raw label, patient id) from a file name: ``person12_virus_3`` -> (``virus``, ``person12``)."""
    if class_folder.upper() == "PNEUMONIA":
        match = PNEUMONIA_NAME.match(stem)
        return (match.group(2).lower(), match.group(1).lower()) if match else ("pneumonia", None)
    match = NORMAL_NAME.match(stem)
    return class_folder, (match.group(1).upper() if match else None)


def scan(root: Path, frontal_only: bool = True) -> SourceScan:
    result = SourceScan()
    unparsed = 0
    for split in SPLITS:
        for class_folder in CLASS_FOLDERS:
            folder = root / split / class_folder
            if not folder.is_dir():
                continue
            for path in list_images(folder, problems=result.notes):
                raw_label, patient = parse_file_name(path.stem, class_folder)
                unparsed += patient is None
                record = Record(str(path), finding_label(raw_label), raw_label, NAME, patient, {"split": split})
                result.records.append(record)
    if unparsed:
        result.notes.append(f"{root}: {unparsed} file names carry no patient id (or pneumonia kind)")
    return result


register_source(Source(NAME, detect, scan, "Kermany chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/<file>"))
