"""The structured report of one screened image: a Comprehensive 3D SR following TID 1500 (Measurement Report),
built with highdicom.

Content tree (under the "Imaging Measurement Report" container): the algorithm as the device observer; the
procedure (SNOMED CT "Plain chest X-ray"); one measurement group (TID 1501) per class, each referencing the source
image, with the class's probability (DCM "Probability", no units) and, where the decision has one, its threshold
(DCM "Threshold Value"); a group for the OOD guard's score; then "Qualitative Evaluations": the decided finding
(DCM "Finding" = the class's code), the decision rule in words, the guard's verdict, the model's known limits and
the screening notice. An image the guard rejects gets no class groups and no finding, only the guard's verdict.
"""

from __future__ import annotations

import copy

import highdicom as hd
from highdicom.sr import CodeContentItem, ContainerContentItem, TextContentItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxrscreen import SCREENING_NOTICE
from cxrscreen.dicom.codes import (
    DECISION_RULE,
    FINDING,
    IN_DISTRIBUTION,
    KNOWN_LIMIT,
    NO_UNITS,
    NOTICE,
    OOD_CHECK,
    OOD_SCORE,
    OUT_OF_DISTRIBUTION,
    PLAIN_CHEST_XRAY,
    PROBABILITY,
    QUALITATIVE_EVALUATIONS,
    THRESHOLD,
    Algorithm,
    concept,
)
from cxrscreen.dicom.uids import SR, hashed_uid, instance_uid, series_uid
from cxrscreen.inference.results import Prediction
from cxrscreen.models.class_codes import PRIVATE_SCHEME

SR_SERIES_NUMBER = 9901  # high, so the results list after the acquired series in a viewer
SR_SERIES_DESCRIPTION = "cxrscreen screening report (not for diagnosis)"
REJECTED_TEXT = "The OOD guard judged this image unlike the chest X-rays the model was trained on: no finding is given."
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def build_sr(source: Dataset, prediction: Prediction, algorithm: Algorithm) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``prediction`` on ``source`` (a CR, DX or SC image), in the source's study."""
    evidence = header_of(source)
    sop_uid = str(source.SOPInstanceUID)
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"checkpoint sha256 {algorithm.digest}", f"cxrscreen {algorithm.software}"],
        manufacturer="cxrscreen",
    )
    groups = _class_groups(evidence, prediction, algorithm, algorithm_id) if prediction.in_distribution else []
    if prediction.ood_score is not None:
        groups.append(_guard_group(evidence, prediction, algorithm, algorithm_id))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=groups or None,
    )
    root = report[0]
    root.ContentSequence.append(_qualitative_evaluations(prediction, algorithm))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[evidence],
        content=_without_items(root),
        series_instance_uid=series_uid(sop_uid, algorithm.digest, SR),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid(sop_uid, algorithm.digest, SR),
        instance_number=1,
        manufacturer="cxrscreen",
        is_complete=True,
        is_final=False,  # a machine's screening, never verified by a person
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.software,
    )
    # The content goes in now, as the constructor would have put it: the constructor deep-copies the whole tree and
    # searches it for references (half an SR's cost, for evidence that is the source alone: every group references
    # it, and the evidence is made from it either way). highdicom's view of the content (``sr.content``) is the
    # report just built, what ``Comprehensive3DSR.from_dataset`` would parse back out of the tree at a third of the
    # build's cost (tests/dicom/test_screen.py checks they agree).
    for element in root:
        sr[element.tag] = element
    sr.CodingSchemeIdentificationSequence = [private_scheme()]
    sr._content = report
    return sr


def _without_items(root: Dataset) -> Dataset:
    """The report's root container with no content items: what the SR constructor gets (see :func:`build_sr`)."""
    shell = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            shell[element.tag] = element
    shell.ContentSequence = []
    return shell


def private_scheme() -> Dataset:
    """The SOP Common module's declaration of cxrscreen's private coding scheme (PS3.3 C.12.1.1.7)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "cxrscreen private codes"
    item.CodingSchemeResponsibleOrganization = "cxrscreen"
    return item


# What a result takes from its source: the patient and study modules, the source's identity and what says which
# image it was (the rest, private tags included, stays behind: copying hundreds of elements cost more than building).
HEADER_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDsSequence",
    "PatientBirthDate", "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PatientIdentityRemoved",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
    "Modality", "Laterality", "ImageLaterality", "BodyPartExamined", "PatientOrientation", "ViewPosition",
    "InstitutionName", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames", "PixelSpacing", "ImagerPixelSpacing",
)


def header_of(source: Dataset) -> Dataset:
    """The part of ``source`` a result needs to reference it and join its study (:data:`HEADER_KEYWORDS`), as a
    copy: highdicom shares elements with the datasets it is given."""
    header = Dataset()
    for keyword in HEADER_KEYWORDS:
        if keyword in source:
            header[keyword] = copy.deepcopy(source[keyword])
    header.file_meta = copy.deepcopy(getattr(source, "file_meta", Dataset()))
    return header


def _observation_context(algorithm: Algorithm) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hashed_uid("device", algorithm.digest),
        name=algorithm.name[:64],
        manufacturer_name="cxrscreen",
        model_name=f"{algorithm.name} v{algorithm.version}"[:64],
        serial_number=algorithm.digest[:16],
    )
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    return hd.sr.ObservationContext(observer_device_context=observer)


def _class_groups(evidence, prediction: Prediction, algorithm: Algorithm, algorithm_id) -> list:
    """One TID 1501 group per class: its probability and, when the decision used one, its threshold."""
    decision = prediction.decision
    thresholds = dict(decision.below) if decision else {}
    if decision and decision.cutoff is not None:
        thresholds[decision.label] = decision.cutoff
    groups = []
    for name in algorithm.classes:
        measurements = [hd.sr.Measurement(name=PROBABILITY, value=round(prediction.probabilities[name], 6), unit=NO_UNITS)]
        if name in thresholds:
            measurements.append(hd.sr.Measurement(name=THRESHOLD, value=thresholds[name], unit=NO_UNITS))
        groups.append(_group(evidence, f"class {name}", algorithm, algorithm_id, concept(algorithm.class_codes[name]), measurements))
    return groups


def _guard_group(evidence, prediction: Prediction, algorithm: Algorithm, algorithm_id):
    score = hd.sr.Measurement(name=OOD_SCORE, value=round(float(prediction.ood_score), 6), unit=NO_UNITS)
    return _group(evidence, "out-of-distribution check", algorithm, algorithm_id, OOD_CHECK, [score])


def _group(evidence, identifier: str, algorithm: Algorithm, algorithm_id, finding_type, measurements):
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hashed_uid("tracking", str(evidence.SOPInstanceUID), algorithm.digest, identifier),
            identifier=identifier,
        ),
        finding_type=finding_type,
        algorithm_id=algorithm_id,
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(evidence)],
    )


def _qualitative_evaluations(prediction: Prediction, algorithm: Algorithm) -> ContainerContentItem:
    """TID 1500's "Qualitative Evaluations": the finding, the rule that chose it, the guard, limits, notice."""
    items = []
    decision = prediction.decision
    if prediction.in_distribution and decision is not None:
        items.append(CodeContentItem(FINDING, concept(algorithm.class_codes[decision.label]), CONTAINS))
        rule = f"{decision.rule}: {decision.describe()}"
        items.append(TextContentItem(DECISION_RULE, rule[:1024], CONTAINS))
    if prediction.ood_score is not None or not prediction.in_distribution:
        verdict = IN_DISTRIBUTION if prediction.in_distribution else OUT_OF_DISTRIBUTION
        items.append(CodeContentItem(OOD_CHECK, verdict, CONTAINS))
    if not prediction.in_distribution:
        items.append(TextContentItem(OOD_CHECK, REJECTED_TEXT, CONTAINS))
    for limit in prediction.known_limits:
        items.append(TextContentItem(KNOWN_LIMIT, limit[:1024], CONTAINS))
    items.append(TextContentItem(NOTICE, SCREENING_NOTICE, CONTAINS))
    container = ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=CONTAINS)
    container.ContentSequence = items
    return container
