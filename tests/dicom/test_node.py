"""The DICOM node in-process: it screens what it is sent and sends the results on, refuses bad input with DIMSE
failures while serving on, keeps results while the PACS is down, checks AE titles, speaks TLS, logs no patient data."""

from __future__ import annotations

import logging
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)

from cxrscreen.dicom.node import DicomNode, NodeConfig
from cxrscreen.dicom.screen import DicomScreener
from cxrscreen.dicom.workers import LocalScreening, ScreeningPool
from cxrscreen.dicom.send import Destination
from cxrscreen.errors import ConfigError
from dicom.orthanc import free_port
from dicom.conftest import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, StoreCollector, chest_jpegs, make_dicom, write_dicom

STORAGE = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation, CTImageStorage)


def scu(calling: str = "MODALITY", ssl_context: ssl.SSLContext | None = None) -> AE:
    ae = AE(ae_title=calling)
    for sop_class in STORAGE + (Verification,):
        ae.add_requested_context(sop_class)
    return ae


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def node_factory(bundled_screener, tmp_path):
    nodes = []

    def make(screener=None, **config) -> DicomNode:
        node = DicomNode(NodeConfig(port=0, spool=tmp_path / "spool", **config), screener or bundled_screener)
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.mark.parametrize("processes", [None, 0], ids=["worker-processes", "in-process"])
def test_node_screens_frontal_chest_xrays_and_sends_their_results(processes, node_factory, bundled_screener, collector, shared_data, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    events = []  # the node tells its observers, wherever it screened
    screener = DicomScreener(bundled_screener.predictor, observers=[events.append])
    node = node_factory(screener, send_to=Destination("PACS", "127.0.0.1", collector.server.server_address[1]), out=out,
                        processes=processes)
    assert isinstance(node.screening, LocalScreening if processes == 0 else ScreeningPool)
    jpegs = chest_jpegs(shared_data, 2)
    frontal = [make_dicom(jpegs[0]), make_dicom(jpegs[1], modality="DX", bits=16, monochrome1=True)]
    others = [make_dicom(jpegs[0], view="LATERAL"), make_dicom(jpegs[0], modality="CT")]
    assoc = scu().associate("127.0.0.1", node.port, ae_title="CXRSCREEN")
    assert assoc.is_established
    assert [assoc.send_c_store(ds).Status for ds in frontal + others] == [0, 0, 0, 0]
    assoc.release()
    wait_for(lambda: len(collector.received) == 4 and node.idle())
    sources = {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in collector.received.values() if "SourceImageSequence" in ds}
    assert sources == {ds.SOPInstanceUID for ds in frontal}
    assert sorted(ds.Modality for ds in collector.received.values()) == ["OT", "OT", "SR", "SR"] or \
        sorted(ds.SOPClassUID.name for ds in collector.received.values()).count("Comprehensive 3D SR Storage") == 2
    assert set(collector.counts.values()) == {1}
    assert len(list(out.glob("*.dcm"))) == 4
    screened = {event.input_id: event for event in events if event.prediction is not None}
    assert set(screened) == {ds.SOPInstanceUID for ds in frontal} and len(events) == 4
    log = caplog.text
    assert "lateral view" in log and "CT" in log
    for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "SECRETNAME"):
        assert secret not in log


def test_bad_input_gets_dimse_failures_and_the_node_serves_on(node_factory, shared_data, tmp_path) -> None:
    node = node_factory(out=tmp_path / "out")
    jpeg = chest_jpegs(shared_data, 1)[0]
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(write_dicom(make_dicom(jpeg), tmp_path / "whole.dcm").read_bytes()[:3000])
    ae = scu()
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port)
    assert assoc.is_established
    assert PatientRootQueryRetrieveInformationModelFind not in [c.abstract_syntax for c in assoc.accepted_contexts]
    assert assoc.send_c_store(truncated).Status == 0xC210  # "cannot understand", and the association goes on
    good = make_dicom(jpeg)
    assert assoc.send_c_store(good).Status == 0
    assoc.release()
    wait_for(lambda: node.idle())
    assert [p.name for p in (tmp_path / "out").glob("*_sr.dcm")] == [f"{good.SOPInstanceUID}_sr.dcm"]


def test_a_down_destination_is_retried_and_nothing_is_lost(node_factory, shared_data, caplog) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    node = node_factory(send_to=Destination("PACS", "127.0.0.1", port))
    sources = [make_dicom(path) for path in chest_jpegs(shared_data, 2)]
    assoc = scu().associate("127.0.0.1", node.port)
    assert all(assoc.send_c_store(ds).Status == 0 for ds in sources)
    assoc.release()
    wait_for(lambda: "down" in caplog.text, timeout=60)
    assert "wait in the spool" in caplog.text and not node.idle()
    pacs = StoreCollector()
    pacs.start(port)
    try:
        wait_for(lambda: len(pacs.received) == 4 and node.idle(), timeout=90)
    finally:
        pacs.stop()
    assert set(pacs.counts.values()) == {1}


def test_allow_rejects_other_calling_ae_titles(node_factory, tmp_path) -> None:
    node = node_factory(out=tmp_path / "out", allow=("ORTHANC",))
    refused = scu("STRANGER").associate("127.0.0.1", node.port)
    assert refused.is_rejected
    allowed = scu("ORTHANC").associate("127.0.0.1", node.port)
    assert allowed.is_established and allowed.send_c_echo().Status == 0
    allowed.release()


def test_tls(node_factory, tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    node = node_factory(out=tmp_path / "out", tls_cert=cert, tls_key=key)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    context.check_hostname = False
    assoc = scu().associate("127.0.0.1", node.port, tls_args=(context, None))
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    plain = scu().associate("127.0.0.1", node.port)
    assert not plain.is_established


def test_config_is_checked(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--send-to"):
        Destination.parse("PACS@host")
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    with pytest.raises(ConfigError, match="results must go somewhere"):
        NodeConfig().check()
    with pytest.raises(ConfigError, match="go together"):
        NodeConfig(out=tmp_path, tls_cert=tmp_path / "c.pem").check()
    with pytest.raises(ConfigError, match="--send-associations 0"):
        NodeConfig(out=tmp_path, send_associations=0).check()


class SlowScreener(DicomScreener):
    """Screens as the bundled screener does, 0.2 s slower, noting how many objects wait when it takes one."""

    def __init__(self, screener: DicomScreener):
        super().__init__(screener.predictor, outputs=("sr",))
        self.node: DicomNode | None = None
        self.waiting: list[int] = []

    def screen_quietly(self, data: bytes, name: str):
        self.waiting.append(self.node._screen_queue.qsize())
        time.sleep(0.2)
        return super().screen_quietly(data, name)


@pytest.mark.parametrize("hold_s", [5.0, 0.02], ids=["held", "hold-capped"])
def test_a_burst_is_paced_by_holding_responses_while_the_workers_are_behind(hold_s, node_factory, bundled_screener,
                                                                            shared_data, tmp_path, monkeypatch) -> None:
    """Flow control: while more objects wait than the workers take next, a response (its object already spooled) is
    held, so a sender's burst does not pile up; never longer than ACK_HOLD_S (a PACS's SCU times out)."""
    import cxrscreen.dicom.node as node_module

    monkeypatch.setattr(node_module, "ACK_HOLD_S", hold_s)
    screener = SlowScreener(bundled_screener)
    node = node_factory(screener, out=tmp_path / "out", processes=0)
    screener.node = node
    limit = node_module.WAITING_PER_WORKER * node.screening.workers
    burst = [make_dicom(jpeg) for jpeg in chest_jpegs(shared_data, limit + 8)]
    assoc = scu().associate("127.0.0.1", node.port, ae_title="CXRSCREEN")
    responses = []
    for ds in burst:
        began = time.monotonic()
        assert assoc.send_c_store(ds).Status == 0x0000
        responses.append(time.monotonic() - began)
    assoc.release()
    wait_for(lambda: len(list((tmp_path / "out").glob("*_sr.dcm"))) == len(burst))
    if hold_s > 1:
        assert max(screener.waiting) <= limit + 1  # one association: one object beyond the limit at most
        assert max(responses) > 0.1  # held while the workers were behind
    else:
        assert max(screener.waiting) > limit + 1  # the cap let the burst in
        assert max(responses) < 1.0


def test_a_paced_stream_of_images_is_sent_over_open_associations(node_factory, collector, shared_data, tmp_path) -> None:
    """Each association to the PACS stays open while results keep coming (released after SENDER_IDLE_S without any):
    re-opened whenever the queue ran dry, it cost 30 ms and 8 ms of CPU per image of a paced stream."""
    node = node_factory(send_to=Destination("PACS", "127.0.0.1", collector.server.server_address[1]), processes=0)
    assoc = scu().associate("127.0.0.1", node.port, ae_title="CXRSCREEN")
    for sent, ds in enumerate([make_dicom(jpeg) for jpeg in chest_jpegs(shared_data, 5)], start=1):
        assert assoc.send_c_store(ds).Status == 0x0000
        wait_for(lambda: len(collector.raw) == 2 * sent and node.idle())  # the queue ran dry before the next image
    assoc.release()
    assert len(collector.raw) == 10 and collector.associations <= node.config.send_associations < 5


def test_every_storage_class_in_every_syntax_is_accepted_on_each_association_anew(node_factory, tmp_path) -> None:
    """Each association negotiates on its own copy of the node's contexts (copied cheaply: the UIDs are shared, the
    lists are not), and every storage SOP class is accepted in any transfer syntax, also on later associations."""
    import copy

    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless
    from pynetdicom.sop_class import MRImageStorage

    from cxrscreen.dicom.node import accepted_contexts

    contexts = accepted_contexts()
    twin = copy.deepcopy(contexts)
    assert [(c.abstract_syntax, c.transfer_syntax) for c in twin] == [(c.abstract_syntax, c.transfer_syntax) for c in contexts]
    twin[0].transfer_syntax = [ExplicitVRBigEndian]
    twin[1].context_id = 1
    assert len(contexts[0].transfer_syntax) > 20 and contexts[1].context_id is None
    node = node_factory(out=tmp_path / "out")
    for _ in range(2):
        ae = AE(ae_title="MODALITY")
        for sop_class, syntax in [(CTImageStorage, JPEG2000Lossless), (MRImageStorage, DeflatedExplicitVRLittleEndian),
                                  (ComputedRadiographyImageStorage, ExplicitVRBigEndian)]:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CXRSCREEN")
        assert len(assoc.accepted_contexts) == 3
        assoc.release()


class SlowPacs(StoreCollector):
    """A destination that takes 1 s per C-STORE (as a busy PACS indexing what it stores), noting how many it handled
    at once."""

    def __init__(self):
        super().__init__()
        self.in_flight = self.most_in_flight = 0

    def _on_store(self, event) -> int:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(1.0)
        with self.lock:
            self.in_flight -= 1
        return super()._on_store(event)


def test_results_go_to_the_pacs_over_several_associations_at_once(node_factory, shared_data, tmp_path) -> None:
    """A C-STORE waits for its response: the senders, each on its own association, keep a slow PACS busy side by
    side instead of one after the other."""
    pacs = SlowPacs()
    pacs.start()
    try:
        node = node_factory(send_to=Destination("PACS", "127.0.0.1", pacs.server.server_address[1]), processes=0,
                            send_associations=3)
        assoc = scu().associate("127.0.0.1", node.port, ae_title="CXRSCREEN")
        for ds in [make_dicom(jpeg) for jpeg in chest_jpegs(shared_data, 6)]:
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        wait_for(lambda: len(pacs.raw) == 12 and node.idle())
    finally:
        pacs.stop()
    assert set(pacs.counts.values()) == {1} and pacs.associations == 3 and pacs.most_in_flight >= 2
