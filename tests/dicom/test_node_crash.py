"""kill -9 in the middle of a 100-image send: restarted on the same spool, the node screens and sends every object
it acknowledged, each result once (a result may be re-sent only if the kill fell between the destination's
acknowledgement and the journal line after it; it then has the same UIDs, so a PACS replaces it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from dicom.conftest import chest_jpegs, make_dicom

COUNT = 100


def start_node(model: Path, spool: Path, pacs_port: int) -> tuple[subprocess.Popen, int]:
    """``cxrscreen dicom listen`` as a subprocess; its port, read from the line it prints once bound."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cxrscreen", "dicom", "listen", "--port", "0", "--spool", str(spool), "--model", str(model),
         "--send-to", f"PACS@127.0.0.1:{pacs_port}", "--outputs", "sr"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    line = process.stdout.readline()
    if "listen" not in line:
        process.kill()
        pytest.fail(f"node did not start: {line!r}")
    return process, int(line.rsplit(":", 1)[1])


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"worker processes {alive} outlived their node"


def test_kill_9_mid_send_then_restart_sends_every_acknowledged_object_once(checkpoint_factory, shared_data, tmp_path, collector) -> None:
    model = checkpoint_factory(tmp_path / "tiny.pt")
    spool = tmp_path / "spool"
    pacs_port = collector.server.server_address[1]
    jpegs = chest_jpegs(shared_data, 20)
    sources = [make_dicom(jpegs[i % len(jpegs)]) for i in range(COUNT)]
    node, port = start_node(model, spool, pacs_port)
    acknowledged: list[str] = []

    def send_all() -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", port)
        for ds in sources:
            if not assoc.is_established:
                return
            status = assoc.send_c_store(ds)
            if status and status.Status == 0:
                acknowledged.append(str(ds.SOPInstanceUID))
        assoc.release()

    sender = threading.Thread(target=send_all)
    sender.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 40 and time.monotonic() < deadline:  # kill with work received, screened and in flight
        time.sleep(0.01)
    workers = children(node.pid)
    node.send_signal(signal.SIGKILL)
    node.wait()
    sender.join(timeout=60)
    assert workers, "the node screens in worker processes by default"
    wait_gone(workers)  # a node killed outright leaves no screening process behind
    assert 40 <= len(acknowledged) < COUNT
    sent_before_restart = len(collector.received)
    node, _ = start_node(model, spool, pacs_port)
    try:
        wait_until = time.monotonic() + 180
        while time.monotonic() < wait_until and (any((spool / "received").glob("*.dcm")) or not collector.received):
            time.sleep(0.1)
    finally:
        node.terminate()
        node.wait(timeout=30)
    assert not any((spool / "received").glob("*.dcm")), "the restarted node left objects in the spool"
    by_source: dict[str, list[str]] = {}
    for uid, ds in collector.received.items():
        source = ds.SourceImageSequence[0] if "SourceImageSequence" in ds else \
            ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        by_source.setdefault(str(source.ReferencedSOPInstanceUID), []).append(uid)
    missing = [uid for uid in acknowledged if len(by_source.get(uid, [])) != 1]
    assert not missing, f"{len(missing)} acknowledged objects lack their SR"
    resent = [uid for uid, count in collector.counts.items() if count > 1]
    assert len(resent) <= 1, resent  # at most the one result in flight at the kill
    assert sent_before_restart < len(collector.received)  # the kill did fall in the middle
