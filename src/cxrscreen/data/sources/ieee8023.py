"""Cohen et al. COVID-19 Image Data Collection (github.com/ieee8023/covid-chestxray-dataset).

Layout: ``metadata.csv`` (one row per image) and ``images/``. Label from ``finding`` (hierarchical findings such
as ``Pneumonia/Viral/COVID-19`` use their last part when the whole is not in the alias table), patient from
``patientid``, site from ``location`` (country = its last comma-separated part), giving source
``ieee8023/<country>``. Only frontal X-rays (``view`` PA, AP, AP Supine, AP Erect) are kept by default; lateral
views, CT rows, rows whose image file is missing and rows repeating a listed image are counted in ``SourceScan.excluded``.
"""

from __future__ import annotations

from pathlib import Path

from cxrscreen.data.labels import canonical_finding
from cxrscreen.data.records import Record
from cxrscreen.data.sources.base import Source, SourceScan, finding_label, read_csv_rows, register_source

NAME = "ieee8023"
METADATA = "metadata.csv"
REQUIRED_COLUMNS = ("patientid", "finding", "filename")
FRONTAL_VIEWS = frozenset({"pa", "ap", "ap supine", "ap erect"})
KEPT_COLUMNS = ("view", "location", "license", "sex", "age")


def detect(path: Path) -> Path | None:
    if not ((path / METADATA).is_file() and (path / "images").is_dir()):
        return None
    try:
        with open(path / METADATA, encoding="utf-8", errors="replace") as fh:
            header = fh.readline().lower()
    except OSError:
        return None
    return path if all(column in header for column in REQUIRED_COLUMNS) else None


def site_of(location: str) -> str:
    """``ieee8023/<country>`` from ``"Cho Ray Hospital, Ho Chi Minh City, Vietnam"``; ``ieee8023`` when unknown."""
    country = location.split(",")[-1].strip() if location else ""
    return f"{NAME}/{country}" if country else NAME


def finding_of(raw: str) -> str:
    return canonical_finding(raw) or canonical_finding(raw.split("/")[-1]) or finding_label(raw)


def exclusion_reason(row: dict[str, str], frontal_only: bool) -> str | None:
    """Why a metadata row is not used, or None when it is."""
    if row.get("modality", "x-ray").lower() not in ("x-ray", "xray", ""):
        return f"{row['modality']} images (not X-ray)"
    if not row["finding"]:
        return "rows without a finding"
    view = row.get("view", "").lower()
    if frontal_only and view not in FRONTAL_VIEWS:
        return "lateral views (frontal only)" if view in ("l", "lateral") else f"'{row.get('view', '')}' views (not frontal)"
    return None


def scan(root: Path, frontal_only: bool = True) -> SourceScan:
    result = SourceScan()
    missing_example = None
    listed: set[Path] = set()
    for row in read_csv_rows(root / METADATA, REQUIRED_COLUMNS):
        reason = exclusion_reason(row, frontal_only)
        path = root / (row.get("folder") or "images") / row["filename"]
        if reason is None and not path.is_file():
            reason = "rows whose image file is missing"
            missing_example = missing_example or path
        if reason is None and path in listed:
            reason = "rows repeating an image already listed"
        if reason:
            result.excluded[reason] += 1
            continue
        listed.add(path)
        extra = {key: row[key] for key in KEPT_COLUMNS if row.get(key)}
        record = Record(str(path), finding_of(row["finding"]), row["finding"], site_of(row.get("location", "")),
                        row["patientid"] or None, extra)
        result.records.append(record)
    if missing_example:
        result.notes.append(f"{root / METADATA}: image files missing, e.g. {missing_example}")
    return result


register_source(Source(NAME, detect, scan, "ieee8023 covid-chestxray-dataset: metadata.csv + images/"))
