"""The coded concept of each class a model predicts, for results that name findings in codes (the DICOM SR).

A model file may carry its own table (``ModelMeta.class_codes``: ``{class: {"value", "scheme", "meaning"}}``); a
class without one falls back to :data:`STANDARD_CLASS_CODES` (the canonical findings of
:mod:`cxrscreen.data.labels`), else to a code of the private scheme :data:`PRIVATE_SCHEME`, so every class always
has a code. Torch-free: the DICOM writer reads it from a model's meta.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from cxrscreen.errors import ModelError

PRIVATE_SCHEME = "99CXRSCREEN"  # "99" prefix: a private coding scheme designator (DICOM PS3.16, 8.2)


@dataclass(frozen=True)
class ClassCode:
    """One coded concept: ``value`` in coding scheme ``scheme`` (``SCT`` = SNOMED CT), read as ``meaning``."""

    value: str
    scheme: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}


# SNOMED CT concepts of the canonical findings, where one exists. Sources of each code:
# - 840539006 COVID-19: OHDSI concept set (CONCEPT_CODE 840539006, "COVID-19", vocabulary SNOMED) and
#   hl7germany/forschungsnetz-covid19 input/fsh/codesystems/SNOMEDsupplement.fsh ("840539006| COVID-19|").
# - 17621005 Normal (qualifier value): the same SNOMEDsupplement.fsh, "Radiological finding normal" =
#   118247008 |Radiologic finding| : 363713009 |Has interpretation| = 17621005 |Normal|.
# - 75570004 Viral pneumonia, 233604007 Pneumonia, 53084003 Bacterial pneumonia: OHDSI/Covid-19
#   Vocabulary/Wiki/phenotypes/Pneumonia.md (233604007) and SNOMED CT browser links (snomed.info/id/53084003
#   "Bacterial pneumonia (disorder)", 75570004 "Viral pneumonia").
# - 56717001 Tuberculosis: FHIR codings "56717001 Tuberculosis (disorder)", system http://snomed.info/sct.
# Findings without a well-known single concept (lung opacity, "other", nodule, fungal) use the private scheme.
STANDARD_CLASS_CODES: dict[str, ClassCode] = {
    "covid": ClassCode("840539006", "SCT", "COVID-19"),
    "normal": ClassCode("17621005", "SCT", "Normal"),
    "viral": ClassCode("75570004", "SCT", "Viral pneumonia"),
    "bacterial": ClassCode("53084003", "SCT", "Bacterial pneumonia"),
    "other_pneumonia": ClassCode("233604007", "SCT", "Pneumonia"),
    "tuberculosis": ClassCode("56717001", "SCT", "Tuberculosis"),
}


def class_code(name: str, table: Mapping[str, Mapping[str, str]] | None = None) -> ClassCode:
    """The code of class ``name``: from the model's ``table`` if it names it, else the standard one, else private."""
    entry = (table or {}).get(name)
    if entry is not None:
        try:
            return ClassCode(str(entry["value"]), str(entry["scheme"]), str(entry["meaning"]))
        except (KeyError, TypeError):
            raise ModelError(f"class_codes[{name!r}]: expected {{'value', 'scheme', 'meaning'}}, got {entry!r}") from None
    if name in STANDARD_CLASS_CODES:
        return STANDARD_CLASS_CODES[name]
    # A code value is at most 16 characters (VR SH): a longer class name is coded by its hash.
    value = name if len(name) <= 16 else "H" + hashlib.sha256(name.encode()).hexdigest()[:15]
    return ClassCode(value, PRIVATE_SCHEME, f"cxrscreen class {name}")
