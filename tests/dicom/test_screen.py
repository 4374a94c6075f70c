"""``dicom screen``'s result objects: a TID 1500 SR and a burned-in Grad-CAM SC in the source's study, valid by
dciodvfy, with deterministic UIDs; what is not screened gets no object and a reason."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cxrscreen.data.dicom import decode_dicom
from cxrscreen.dicom.codes import Algorithm
from cxrscreen.dicom.screen import DicomScreener, dicom_files, parse_outputs, write_results
from cxrscreen.dicom.uids import hashed_uid
from cxrscreen.errors import ConfigError
from cxrscreen.inference.predictor import load_predictor
from dicom.conftest import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, chest_jpegs, make_dicom, write_dicom


def dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def sr_items(sr) -> list:
    """Every content item of an SR, depth first."""
    found, stack = [], list(sr.ContentSequence)
    while stack:
        item = stack.pop(0)
        found.append(item)
        stack[:0] = list(item.get("ContentSequence", []))
    return found


def named(items, meaning: str) -> list:
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def decided_findings(sr) -> list:
    """The "Finding" items of TID 1500's Qualitative Evaluations (each class's group has a "Finding" type too)."""
    container = named(sr.ContentSequence, "Qualitative Evaluations")
    assert len(container) == 1
    return named(container[0].ContentSequence, "Finding")


@pytest.mark.parametrize("variant", ["cr8", "dx16-monochrome1"])
def test_results_join_the_study_reference_the_source_and_pass_dciodvfy(variant, bundled_screener, shared_data, tmp_path) -> None:
    jpeg = chest_jpegs(shared_data, 1)[0]
    source = make_dicom(jpeg) if variant == "cr8" else make_dicom(jpeg, modality="DX", bits=16, monochrome1=True)
    data = dicom_bytes(source)
    outcome = bundled_screener.screen(data, "in.dcm")
    assert outcome.screened and set(outcome.results) == {"sr", "sc"}
    written = write_results(outcome, tmp_path)
    for path in written:
        assert dciodvfy_errors(path) == [], path.name
    sr = hd.sr.srread(written[0])
    sc = pydicom.dcmread(written[1])
    for result in (sr, sc):
        assert result.StudyInstanceUID == source.StudyInstanceUID and result.AccessionNumber == "ACC-42"
        assert (result.PatientName, result.PatientID, result.PatientBirthDate) == (PATIENT_NAME, PATIENT_ID, BIRTH_DATE)
        assert result.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB" and sc.ImageType[0] == "DERIVED"
    # The SR's numbers are the predictor's on the same decoded pixels (MONOCHROME1 and 16 bits included).
    expected = bundled_screener.predictor.predict(decode_dicom(data, "in.dcm"))
    items = sr_items(sr)
    probabilities = [float(i.MeasuredValueSequence[0].NumericValue) for i in named(items, "Probability")]
    assert probabilities == pytest.approx([expected.probabilities[c] for c in bundled_screener.algorithm.classes], abs=1e-5)
    finding = decided_findings(sr)
    assert len(finding) == 1 and expected.in_distribution
    code = bundled_screener.predictor.meta.class_code(expected.label)
    assert finding[0].ConceptCodeSequence[0].CodeValue == code.value
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert any("not a diagnosis" in t for t in texts)
    assert all(any(limit[:60] in t for t in texts) for limit in expected.known_limits)
    algorithm = bundled_screener.algorithm
    assert f"checkpoint sha256 {algorithm.digest}" in texts and algorithm.name in texts


def test_the_sr_objects_highdicom_view_is_its_content(bundled_screener, shared_data) -> None:
    """The SR is built without highdicom's copy of the content: its ``content`` view must still be the document."""
    outcome = bundled_screener.screen(dicom_bytes(make_dicom(chest_jpegs(shared_data, 1)[0])), "in.dcm")
    sr = outcome.results["sr"]
    assert sr.content[0].ContentSequence == sr.ContentSequence and sr.content[0].ContentSequence
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == len(bundled_screener.algorithm.classes) + (outcome.prediction.ood_score is not None)
    for group in groups:
        assert group.source_images[0].referenced_sop_instance_uid == outcome.sop_instance_uid
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == outcome.sop_instance_uid
    parsed = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(dicom_bytes(sr))))
    assert type(sr.content) is type(parsed.content)
    assert [type(item) for item in sr.content[0].ContentSequence] == [type(item) for item in parsed.content[0].ContentSequence]
    assert [g.tracking_uid for g in groups] == [g.tracking_uid for g in parsed.content.get_image_measurement_groups()]


def test_covid_is_coded_with_snomed_and_the_sr_states_the_threshold(shared_data, tmp_path) -> None:
    predictor = load_predictor(thresholds={"covid": 0.01})
    screener = DicomScreener(predictor, outputs=("sr",))
    outcome = screener.screen(dicom_bytes(make_dicom(chest_jpegs(shared_data, 1)[0])), "in.dcm")
    assert outcome.prediction.decision.rule == "threshold" and outcome.prediction.label == "covid"
    items = sr_items(outcome.results["sr"])
    finding = decided_findings(outcome.results["sr"])[0].ConceptCodeSequence[0]
    assert (finding.CodeValue, finding.CodingSchemeDesignator) == ("840539006", "SCT")
    thresholds = [float(i.MeasuredValueSequence[0].NumericValue) for i in named(items, "Threshold Value")]
    assert thresholds == [0.01]
    rule = named(items, "Decision rule")[0].TextValue
    assert rule.startswith("threshold:") and ">= threshold 0.01" in rule


def test_the_same_image_gives_the_same_uids_and_another_model_other_ones(bundled_screener, shared_data) -> None:
    data = dicom_bytes(make_dicom(chest_jpegs(shared_data, 1)[0]))
    first, again = bundled_screener.screen(data, "a"), bundled_screener.screen(data, "a")
    for kind in ("sr", "sc"):
        assert first.results[kind].SOPInstanceUID == again.results[kind].SOPInstanceUID
        assert first.results[kind].SeriesInstanceUID == again.results[kind].SeriesInstanceUID
    assert first.results["sr"].SOPInstanceUID != first.results["sc"].SOPInstanceUID
    other = Algorithm(**{**bundled_screener.algorithm.__dict__, "digest": "0" * 64})
    from cxrscreen.dicom.sr import build_sr

    assert build_sr(pydicom.dcmread(io.BytesIO(data)), first.prediction, other).SOPInstanceUID != first.results["sr"].SOPInstanceUID
    assert hashed_uid("x").startswith("2.25.") and hashed_uid("x") == hashed_uid("x") != hashed_uid("y")


def test_what_is_not_screened_gets_no_result_and_a_reason(bundled_screener, shared_data) -> None:
    jpeg = chest_jpegs(shared_data, 1)[0]
    screened = bundled_screener.screen(dicom_bytes(make_dicom(jpeg)), "a")
    cases = {
        "lateral view (ViewPosition LL)": make_dicom(jpeg, view="LL"),
        "modality CT": make_dicom(jpeg, modality="CT"),
        "multi-frame (2 frames)": make_dicom(jpeg, frames=2),
        "no pixel data": make_dicom(jpeg, pixels=False),
        "a cxrscreen result": screened.results["sc"],
    }
    events = []
    screener = DicomScreener(bundled_screener.predictor, observers=[events.append])
    for expected, ds in cases.items():
        outcome = screener.screen(dicom_bytes(ds), "x")
        assert not outcome.screened and not outcome.results and not outcome.failed
        assert expected in outcome.reason, outcome.reason
    corrupt = screener.screen(dicom_bytes(make_dicom(jpeg))[:2000], "cut.dcm")
    assert corrupt.failed and not corrupt.results
    assert len(events) == 6 and all(e.door == "dicom" and not e.screened and e.reason for e in events)
    assert events[0].input_id == cases["lateral view (ViewPosition LL)"].SOPInstanceUID


def test_an_image_the_guard_flags_gets_a_report_saying_so_and_no_finding(bundled_screener, tmp_path) -> None:
    noise = (np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)
    outcome = bundled_screener.screen(dicom_bytes(make_dicom(noise)), "noise")
    assert outcome.screened and not outcome.prediction.in_distribution
    items = sr_items(outcome.results["sr"])
    assert decided_findings(outcome.results["sr"]) == [] and named(items, "Probability") == []
    verdict = named(items, "Out-of-distribution check")
    assert any(getattr(i, "ConceptCodeSequence", [None])[0] and i.ConceptCodeSequence[0].CodeValue == "OOD-REJECTED" for i in verdict)
    assert "no finding" in " ".join(outcome.results["sc"].ImageComments.split()).lower()
    assert all(dciodvfy_errors(path) == [] for path in write_results(outcome, tmp_path))


def test_a_models_own_class_codes_travel_in_its_meta(checkpoint_factory, shared_data, tmp_path) -> None:
    codes = {"viral": {"value": "V-1", "scheme": "99SITE", "meaning": "Site viral code"}}
    model = checkpoint_factory(tmp_path / "m.pt", class_codes=codes)
    screener = DicomScreener(load_predictor(model), outputs=("sr",))
    algorithm = screener.algorithm
    assert algorithm.class_codes["viral"].scheme == "99SITE" and algorithm.class_codes["covid"].value == "840539006"
    outcome = screener.screen(dicom_bytes(make_dicom(chest_jpegs(shared_data, 1)[0])), "a")
    schemes = {i.ConceptCodeSequence[0].CodingSchemeDesignator for i in sr_items(outcome.results["sr"]) if i.ValueType == "CODE"}
    assert "99SITE" not in schemes or outcome.prediction.label == "viral"
    finding_types = [str(i.ConceptCodeSequence[0].CodeValue) for i in named(sr_items(outcome.results["sr"]), "Finding")]
    assert "V-1" in finding_types


def test_outputs_and_inputs_are_checked(tmp_path, shared_data) -> None:
    assert parse_outputs("sc, sr") == ("sc", "sr")
    with pytest.raises(ConfigError, match="--outputs"):
        parse_outputs("sr,pdf")
    jpeg = chest_jpegs(shared_data, 1)[0]
    folder = tmp_path / "in"
    folder.mkdir()
    write_dicom(make_dicom(jpeg), folder / "1.2.3")  # named by UID, no suffix: found by content
    (folder / "x.jpg").write_bytes(jpeg.read_bytes())
    listing = dicom_files([folder, jpeg, tmp_path / "missing.dcm"])
    assert listing.files == [folder / "1.2.3"] and listing.skipped == {folder: 1}
    assert "not a DICOM file" in listing.refused[jpeg] and listing.refused[tmp_path / "missing.dcm"] == "file not found"
