"""The model as a DICOM result names it (:class:`Algorithm`), and the coded concepts of the results.

Standard codes come from pydicom's code dictionary (DICOM PS3.16): DCM 122157 "Probability", DCM 122411
"Threshold Value", DCM 121071 "Finding", DCM 126010 "Qualitative Evaluations". What DICOM has no concept for
(the decision rule, the OOD guard's verdict, a known limit, the screening notice) is coded in cxrscreen's private
scheme (:data:`~cxrscreen.models.class_codes.PRIVATE_SCHEME`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from cxrscreen import __version__
from cxrscreen.hashing import file_sha256
from cxrscreen.models.class_codes import PRIVATE_SCHEME, ClassCode

PROBABILITY = codes.DCM.Probability
THRESHOLD = codes.DCM.ThresholdValue
FINDING = codes.DCM.Finding
QUALITATIVE_EVALUATIONS = CodedConcept("126010", "DCM", "Qualitative Evaluations")
NO_UNITS = codes.UCUM.NoUnits
# SNOMED CT 399208008 "Plain chest X-ray" (procedure), the procedure each report is about.
PLAIN_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")


def private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


DECISION_RULE = private("DECISION", "Decision rule")
OOD_CHECK = private("OOD-CHECK", "Out-of-distribution check")
OOD_SCORE = private("OOD-SCORE", "Out-of-distribution score")
IN_DISTRIBUTION = private("OOD-ACCEPTED", "Like the chest X-rays the model was trained on")
OUT_OF_DISTRIBUTION = private("OOD-REJECTED", "Unlike the chest X-rays the model was trained on")
KNOWN_LIMIT = private("KNOWN-LIMIT", "Known limitation of the model")
NOTICE = private("NOTICE", "Screening notice")


def concept(code: ClassCode) -> CodedConcept:
    return CodedConcept(code.value, code.scheme, code.meaning)


@dataclass(frozen=True)
class Algorithm:
    """What a result says made it: the model's ``name``, ``version`` and ``classes`` with their ``class_codes``,
    ``digest`` (SHA-256 of the model file: result UIDs derive from it) and the cxrscreen ``software`` version."""

    name: str
    version: str
    digest: str
    classes: tuple[str, ...]
    class_codes: dict[str, ClassCode]
    software: str = __version__

    @classmethod
    def of(cls, predictor) -> "Algorithm":
        """The algorithm of a loaded :class:`~cxrscreen.inference.predictor.Predictor`."""
        meta = predictor.meta
        return cls(
            name=meta.name,
            version=str(meta.version),
            digest=file_sha256(Path(predictor.model_path)),
            classes=tuple(predictor.classes),
            class_codes={name: meta.class_code(name) for name in predictor.classes},
        )

    @property
    def label(self) -> str:
        """One line for people: ``<name> v<version> (cxrscreen <software>)``."""
        return f"{self.name} v{self.version} (cxrscreen {self.software})"
