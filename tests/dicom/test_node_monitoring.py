"""`dicom listen --audit-log --metrics-port`: the node reports every object it is sent to the audit log and to
Prometheus (C-STOREs by status, screened and unscreened objects), as `serve` and `predict` do; no patient data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, CTImageStorage

from dicom.conftest import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, chest_jpegs, make_dicom
from dicom.test_node import free_port


def samples(text: str, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of the samples called ``name`` in a Prometheus scrape."""
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def test_listen_writes_the_audit_log_and_counts_what_it_was_sent(checkpoint_factory, shared_data, tmp_path) -> None:
    model = checkpoint_factory(tmp_path / "tiny.pt")
    audit, metrics_port = tmp_path / "audit.jsonl", free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    node = subprocess.Popen(
        [sys.executable, "-m", "cxrscreen", "dicom", "listen", "--port", "0", "--spool", str(tmp_path / "spool"),
         "--model", str(model), "--out", str(tmp_path / "out"), "--outputs", "sr", "--processes", "0",
         "--audit-log", str(audit), "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = node.stdout.readline()
        assert f"metrics on 127.0.0.1:{metrics_port}" in line, line
        port = int(line.split(" on 127.0.0.1:")[1].split(",")[0])
        jpegs = chest_jpegs(shared_data, 2)
        sent = [make_dicom(jpegs[0]), make_dicom(jpegs[1]), make_dicom(jpegs[0], view="LATERAL"),
                make_dicom(jpegs[0], modality="CT")]
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port)
        assert all(assoc.send_c_store(ds).Status == 0 for ds in sent)
        assoc.release()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not audit.exists() or len(audit.read_text().splitlines()) < len(sent)):
            time.sleep(0.1)
        lines = [json.loads(text) for text in audit.read_text().splitlines()]
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    finally:
        node.terminate()
        node.wait(timeout=30)
    assert sorted(entry["input_id"] for entry in lines) == sorted(str(ds.SOPInstanceUID) for ds in sent)
    unscreened = [entry for entry in lines if entry.get("reason")]
    assert len(unscreened) == 2 and all(entry["door"] == "dicom" for entry in lines)
    for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE):
        assert secret not in audit.read_text()
    images = samples(scrape, "cxrscreen_images_total")
    assert images[(("door", "dicom"), ("outcome", "screened"))] == 2
    assert images[(("door", "dicom"), ("outcome", "unscreened"))] == 2
    requests = samples(scrape, "cxrscreen_requests_total")
    assert requests[(("door", "dicom"), ("endpoint", "C-STORE"), ("status", "0x0000"))] == len(sent)


def test_screen_writes_one_audit_line_per_object(checkpoint_factory, shared_data, tmp_path) -> None:
    from dicom.conftest import write_dicom

    model = checkpoint_factory(tmp_path / "tiny.pt")
    jpeg = chest_jpegs(shared_data, 1)[0]
    files = [write_dicom(make_dicom(jpeg), tmp_path / "a.dcm"), write_dicom(make_dicom(jpeg, view="LL"), tmp_path / "b.dcm")]
    audit = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run([sys.executable, "-m", "cxrscreen", "dicom", "screen", *map(str, files), "--out",
                           str(tmp_path / "out"), "--model", str(model), "--outputs", "sr", "--audit-log", str(audit)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(text) for text in audit.read_text().splitlines()]
    assert [bool(entry.get("reason")) for entry in lines] == [False, True]
    assert "lateral" in lines[1]["reason"].lower() and PATIENT_NAME not in audit.read_text()
