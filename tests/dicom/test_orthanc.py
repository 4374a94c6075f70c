"""Against a real PACS: a study stored into Orthanc with dcmtk's storescu, sent by Orthanc to cxrscreen, comes
back holding the SR and SC series that reference its frontal image; sending it again adds no instance."""

from __future__ import annotations

import subprocess
import time

import pytest

from cxrscreen.dicom.node import DicomNode, NodeConfig
from cxrscreen.dicom.send import Destination
from dicom.conftest import chest_jpegs, make_dicom, write_dicom
from dicom.orthanc import Orthanc, free_port, require_tool


@pytest.fixture
def pacs_and_node(bundled_screener, tmp_path):
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", {"cxrscreen": ["CXRSCREEN", "127.0.0.1", node_port]})
    node = DicomNode(NodeConfig(port=node_port, spool=tmp_path / "spool", allow=("ORTHANC",),
                                send_to=Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port)), bundled_screener)
    node.start()
    yield orthanc, node
    node.stop()
    orthanc.stop()


def study_instances(orthanc: Orthanc, study: str) -> list[dict]:
    return [orthanc.rest("GET", f"/instances/{i['ID']}/simplified-tags") | {"ID": i["ID"]}
            for i in orthanc.rest("GET", f"/studies/{study}/instances")]


def wait_for_instances(orthanc: Orthanc, study: str, count: int, node: DicomNode) -> list[dict]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if node.idle() and len(orthanc.rest("GET", f"/studies/{study}/instances")) >= count:
            break
        time.sleep(0.2)
    return study_instances(orthanc, study)


def test_orthanc_routes_a_study_to_cxrscreen_and_gets_sr_and_sc_back(pacs_and_node, shared_data, tmp_path) -> None:
    orthanc, node = pacs_and_node
    storescu = require_tool("storescu")
    jpeg = chest_jpegs(shared_data, 1)[0]
    frontal = make_dicom(jpeg)
    lateral = make_dicom(jpeg, view="LL", study_uid=frontal.StudyInstanceUID)
    files = [write_dicom(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate((frontal, lateral))]
    subprocess.run([storescu, "-aec", orthanc.ae_title, "127.0.0.1", str(orthanc.dicom_port), *map(str, files)],
                   check=True, capture_output=True, timeout=60)
    [study] = orthanc.rest("GET", "/studies")
    orthanc.rest("POST", "/modalities/cxrscreen/store", study.encode())
    instances = wait_for_instances(orthanc, study, 4, node)
    by_class = {}
    for tags in instances:
        by_class.setdefault(tags["SOPClassUID"], []).append(tags)
    sr = by_class["1.2.840.10008.5.1.4.1.1.88.34"]  # Comprehensive 3D SR
    sc = by_class["1.2.840.10008.5.1.4.1.1.7"]  # Secondary Capture
    assert len(instances) == 4 and len(sr) == len(sc) == 1  # the lateral got no result
    assert sc[0]["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] == frontal.SOPInstanceUID
    evidence = sr[0]["CurrentRequestedProcedureEvidenceSequence"][0]["ReferencedSeriesSequence"][0]
    assert evidence["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"] == frontal.SOPInstanceUID
    assert sr[0]["StudyInstanceUID"] == sc[0]["StudyInstanceUID"] == frontal.StudyInstanceUID
    assert len(orthanc.rest("GET", f"/studies/{study}/series")) == 4  # frontal, lateral, SR, SC
    orthanc.rest("POST", "/modalities/cxrscreen/store", study.encode())
    time.sleep(1.0)
    again = wait_for_instances(orthanc, study, 4, node)
    assert sorted(i["SOPInstanceUID"] for i in again) == sorted(i["SOPInstanceUID"] for i in instances)
