"""A CSV manifest: ``path,label[,patient_id][,source]``, one row per image.

Relative paths are relative to the CSV's folder. ``label`` goes through the alias table like every other
source's labels; ``source`` defaults to ``manifest``. Rows whose file is missing or whose label is empty are
counted in ``SourceScan.excluded``.
"""

from __future__ import annotations

from pathlib import Path

from cxrscreen.data.records import Record
from cxrscreen.data.sources.base import Source, SourceScan, finding_label, read_csv_rows, register_source

NAME = "manifest"
REQUIRED_COLUMNS = ("path", "label")


def detect(path: Path) -> Path | None:
    return path if path.is_file() and path.suffix.lower() == ".csv" else None


def scan(manifest: Path, frontal_only: bool = True) -> SourceScan:
    result = SourceScan()
    missing_example = None
    for row in read_csv_rows(manifest, REQUIRED_COLUMNS):
        if not row["path"] or not row["label"]:
            result.excluded["rows without a path or label"] += 1
            continue
        path = (manifest.parent / row["path"]).absolute()
        if not path.is_file():
            result.excluded["rows whose image file is missing"] += 1
            missing_example = missing_example or path
            continue
        patient = row.get("patient_id") or None
        result.records.append(
            Record(str(path), finding_label(row["label"]), row["label"], row.get("source") or NAME, patient)
        )
    if missing_example:
        result.notes.append(f"{manifest}: image files missing, e.g. {missing_example}")
    return result


register_source(Source(NAME, detect, scan, "CSV manifest: path,label[,patient_id][,source]"))
