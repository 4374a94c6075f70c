"""What gets screened: a frontal chest radiograph (CR, DX, or a chest Secondary Capture) with one frame of pixels.

Everything else a PACS forwards with a study (CT, laterals, reports, presentation states, cxrscreen's own
results) is accepted by the node but given no result; :func:`refusal` says why, in one line without patient data.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
RADIOGRAPHS = (CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING)
SCREENED_SOP_CLASSES = RADIOGRAPHS + (SECONDARY_CAPTURE,)
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")
# BodyPartExamined values (DICOM PS3.16 Annex L and what modalities write) that mean the chest; empty = unknown,
# screened (the OOD guard is there for what is not a chest X-ray).
CHEST = ("", "CHEST", "THORAX", "LUNG", "CHEST_LAT", "CHEST_PA", "CHEST_AP")
RESULT_MANUFACTURER = "cxrscreen"  # what every result object says it was made by


def refusal(ds: Dataset) -> str | None:
    """Why ``ds`` is not screened (one line, no patient data), or None when it is."""
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    modality = str(ds.get("Modality", "")).strip().upper()
    body_part = str(ds.get("BodyPartExamined", "")).strip().upper()
    if str(ds.get("Manufacturer", "")).strip() == RESULT_MANUFACTURER:
        return "a cxrscreen result"
    if sop_class not in SCREENED_SOP_CLASSES:
        name = sop_class.name if sop_class.is_valid else "unknown SOP class"
        return f"modality {modality or '?'} ({name}) is not a chest radiograph"
    if sop_class == SECONDARY_CAPTURE and body_part != "CHEST":
        return f"Secondary Capture of body part {body_part or 'unknown'}, not CHEST"
    if sop_class in RADIOGRAPHS and body_part not in CHEST:
        return f"{modality or 'radiograph'} of body part {body_part}, not the chest"
    view = lateral_view(ds)
    if view:
        return f"lateral view ({view})"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "no pixel data"
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return "float pixel data is not a radiograph"
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames if frames not in (None, "") else 1)
    except (TypeError, ValueError):
        return f"NumberOfFrames {frames!r} is not a number"
    if frames > 1:
        return f"multi-frame ({frames} frames)"
    return None


def lateral_view(ds: Dataset) -> str | None:
    """The lateral view ``ds`` declares (ViewPosition LL/RL/LATERAL, or a view code meaning lateral), else None."""
    position = str(ds.get("ViewPosition", "")).strip().upper()
    if position in LATERAL_VIEWS:
        return f"ViewPosition {position}"
    for item in ds.get("ViewCodeSequence", []) or []:
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "lateral" in meaning and "decubitus" not in meaning:
            return f"view {item.get('CodeMeaning')}"
    return None
