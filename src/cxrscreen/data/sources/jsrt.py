"""The JSRT database (Shiraishi et al., AJR 174, 2000): 247 chest X-rays from Japanese institutions.

Layout: ``JPCLN<n>`` images (a lung nodule) and ``JPCNN<n>`` images (no nodule: normal) in the folder given or its
``images/`` (``masks/`` beside it ignored). The label comes from the file name; an optional ``metadata.csv``
(``study_id,...,age,gender,...,state,...,diagnosis``, in the image folder or beside ``images/``) adds each image's
age, gender, nodule state (benign / malignant) and diagnosis to ``Record.extra``. Patients are not given.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrscreen.data.records import Record
from cxrscreen.data.sources.base import (
    Source,
    SourceScan,
    finding_label,
    list_images,
    named_images_folder,
    read_csv_rows,
    register_source,
)

NAME = "jsrt"
FILE_NAME = re.compile(r"^JPC(LN|NN)\d+$", re.IGNORECASE)
RAW_LABELS = {"LN": "nodule", "NN": "non-nodule"}
METADATA = "metadata.csv"
KEPT_COLUMNS = ("age", "gender", "state", "diagnosis")
UNKNOWN_VALUES = frozenset({"", "?"})


def detect(path: Path) -> Path | None:
    return named_images_folder(path, FILE_NAME)


def metadata_file(folder: Path) -> Path | None:
    candidates = [folder / METADATA] + ([folder.parent / METADATA] if folder.name.lower() == "images" else [])
    return next((path for path in candidates if path.is_file()), None)


def read_metadata(folder: Path) -> dict[str, dict[str, str]]:
    """Known metadata values per image stem (``JPCLN001``); {} without a ``metadata.csv``."""
    path = metadata_file(folder)
    if path is None:
        return {}
    rows = read_csv_rows(path, ("study_id",))
    return {
        Path(row["study_id"]).stem.upper(): {k: row[k] for k in KEPT_COLUMNS if row.get(k, "") not in UNKNOWN_VALUES}
        for row in rows
    }


def scan(folder: Path, frontal_only: bool = True) -> SourceScan:
    result = SourceScan()
    metadata = read_metadata(folder)
    for path in list_images(folder, problems=result.notes):
        match = FILE_NAME.match(path.stem)
        if match is None:
            result.excluded["images not named like JSRT (JPCLN<n> / JPCNN<n>)"] += 1
            continue
        raw_label = RAW_LABELS[match.group(1).upper()]
        extra = metadata.get(path.stem.upper(), {})
        result.records.append(Record(str(path), finding_label(raw_label), raw_label, NAME, None, dict(extra)))
    if metadata:
        unlisted = sum(1 for r in result.records if Path(r.path).stem.upper() not in metadata)
        if unlisted:
            result.notes.append(f"{metadata_file(folder)}: {unlisted} images have no row (no age or diagnosis)")
    return result


register_source(Source(NAME, detect, scan, "JSRT: [images/]JPCLN<n>, JPCNN<n> (+ metadata.csv)"))
