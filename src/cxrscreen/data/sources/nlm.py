"""The NLM tuberculosis screening sets (Jaeger et al., Quant. Imaging Med. Surg. 4(6), 2014).

Two hospitals, one file-naming convention: ``MCUCXR_<n>_<d>`` (Montgomery County, USA; source ``montgomery``) and
``CHNCXR_<n>_<d>`` (Shenzhen No. 3 Hospital, China; source ``shenzhen``), where the last digit is 0 for a normal
X-ray and 1 for one showing tuberculosis. Layout: the images in the folder given, or in its ``images/`` (the
lung-segmentation copy, ``masks/`` beside it ignored) or ``CXR_png/`` (the NLM download). Patients are not given.
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
    register_source,
)

NAME = "nlm_tb"
MONTGOMERY = "montgomery"
SHENZHEN = "shenzhen"
HOSPITALS = {"MCUCXR": MONTGOMERY, "CHNCXR": SHENZHEN}
FILE_NAME = re.compile(r"^(MCUCXR|CHNCXR)_\d+_([01])$", re.IGNORECASE)
RAW_LABELS = {"0": "normal", "1": "tuberculosis"}
IMAGE_FOLDERS = ("images", "CXR_png")


def detect(path: Path) -> Path | None:
    return named_images_folder(path, FILE_NAME, IMAGE_FOLDERS)


def scan(folder: Path, frontal_only: bool = True) -> SourceScan:
    result = SourceScan()
    for path in list_images(folder, problems=result.notes):
        match = FILE_NAME.match(path.stem)
        if match is None:
            result.excluded["images not named like the NLM sets (MCUCXR_/CHNCXR_<n>_<0|1>)"] += 1
            continue
        raw_label = RAW_LABELS[match.group(2)]
        result.records.append(Record(str(path), finding_label(raw_label), raw_label, HOSPITALS[match.group(1).upper()]))
    return result


register_source(Source(NAME, detect, scan, "NLM Montgomery/Shenzhen TB sets: [images/]MCUCXR_<n>_<0|1>, CHNCXR_<n>_<0|1>"))
