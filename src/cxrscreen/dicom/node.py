"""``cxrscreen dicom listen``: a Storage SCP that a PACS or a modality sends chest X-rays to.

Each C-STORE is written to the :class:`~cxrscreen.dicom.spool.Spool` before its success status goes back (the
sender may forget it then); screening workers turn spooled objects into results (written under ``out`` and/or
queued for ``send_to``); one sender thread C-STOREs them to the PACS, retrying with back-off while it is down.
Every storage SOP class is accepted (a PACS forwards whole studies); what is not a frontal chest radiograph is
logged with its reason and given no result. Log lines name objects by SOPInstanceUID, never by patient data.
"""

from __future__ import annotations

import copy
import io
import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, DEFAULT_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from cxrscreen.dicom.screen import DicomScreener, result_path
from cxrscreen.dicom.workers import screening_for
from cxrscreen.dicom.send import BACKOFF_S, SUCCESS_OR_WARNING, Destination, DestinationDown, Sender, send_at_once
from cxrscreen.dicom.spool import Pending, Spool
from cxrscreen.errors import ConfigError
from cxrscreen.io_utils import atomic_write
from cxrscreen.monitoring.events import ScreeningEvent, notify

log = logging.getLogger("cxrscreen.dicom")
CANNOT_UNDERSTAND = 0xC210  # the dataset could not be decoded
DOES_NOT_MATCH = 0xA900  # the dataset does not match the SOP class / instance of the request
OUT_OF_RESOURCES = 0xA700  # the spool could not be written
MAX_REJECTIONS = 5  # failure statuses from the destination for one object before it is set aside
# Flow control: while more objects wait for a screening worker than WAITING_PER_WORKER per worker, a C-STORE's
# success status (its object already safe in the spool) is held until one is taken, for at most ACK_HOLD_S: half of
# the 10 s a PACS's SCU waits for a response by default (Orthanc's DicomScuTimeout), so no sender times out.
WAITING_PER_WORKER = 2
ACK_HOLD_S = 5.0
SENDER_IDLE_S = 2.0  # the association to the destination is released after this long without results to send


@dataclass
class NodeConfig:
    """How the node listens and where results go. ``allow``: calling AE titles accepted (empty: any);
    ``tls_cert``/``tls_key``: PEM files for DICOM over TLS (both or neither); ``processes``: worker processes that
    screen (None: as many as the predictor's workers; 0: screen in the node's own process); ``send_associations``:
    associations that send results to ``send_to`` side by side."""

    port: int = 11112
    ae_title: str = "CXRSCREEN"
    host: str = "127.0.0.1"
    send_to: Destination | None = None
    out: Path | None = None
    spool: Path = Path("cxrscreen-spool")
    allow: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    processes: int | None = None
    send_associations: int = 2

    def check(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port}: not a TCP port (0-65535; 0 picks a free one)")
        if not 0 < len(self.ae_title.strip()) <= 16:
            raise ConfigError(f"--ae-title {self.ae_title!r}: an AE title has 1 to 16 characters")
        if self.send_to is None and self.out is None:
            raise ConfigError("give --send-to AET@HOST:PORT, --out DIR or both: results must go somewhere")
        if self.send_associations < 1:
            raise ConfigError(f"--send-associations {self.send_associations}: give 1 or more")
        if self.processes is not None and self.processes < 0:
            raise ConfigError(f"--processes {self.processes}: give 0 (screen in the node's process) or more")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{path}: TLS file not found")


class SharedUidContext(PresentationContext):
    """A presentation context whose deep copy copies its list of transfer syntaxes but shares the UIDs in it (immutable
    strings). pynetdicom deep-copies every supported context for each association it accepts: for every storage SOP
    class in every transfer syntax (171 contexts, 7,654 UIDs, each validated again as it is copied) that was 80 ms of
    CPU per association, and a PACS that opens one per image (Orthanc's ``SendToModality`` in a routing script)
    paid it for every image."""

    def __deepcopy__(self, memo: dict) -> "SharedUidContext":
        twin = copy.copy(self)
        twin._transfer_syntax = list(self._transfer_syntax)
        return twin


def accepted_contexts() -> list[PresentationContext]:
    """Every storage SOP class in every transfer syntax (a PACS forwards whole studies), and Verification."""
    contexts = []
    for abstract_syntax, syntaxes in [*((c.abstract_syntax, ALL_TRANSFER_SYNTAXES) for c in AllStoragePresentationContexts),
                                      (Verification, DEFAULT_TRANSFER_SYNTAXES)]:
        context = SharedUidContext()
        context.abstract_syntax = abstract_syntax
        context.transfer_syntax = list(syntaxes)
        contexts.append(context)
    return contexts


def truncated_pixels(ds) -> str | None:
    """Why uncompressed pixel data is shorter than its Rows x Columns x samples x frames, else None (pydicom reads
    a cut dataset without complaint; its pixels would fail only when screened)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or syntax is None or syntax.is_compressed:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated) // 8
    actual = len(ds.PixelData)
    return f"pixel data truncated ({actual} of {expected} bytes)" if actual < expected else None


class DicomNode:
    """The running node: :meth:`start`, then :attr:`port` is bound; :meth:`stop` ends it."""

    def __init__(self, config: NodeConfig, screener: DicomScreener, on_status: Callable[[int], None] | None = None):
        """``on_status``: called with the status of every C-STORE answered (the metrics count them)."""
        config.check()
        self.on_status = on_status
        self.config = config
        self.screener = screener
        self.screening = screening_for(screener, config.processes)
        self.spool = Spool(config.spool)
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs on loopback
        if config.allow:
            self.ae.require_calling_aet = list(config.allow)
        self._screen_queue: queue.Queue[str | None] = queue.Queue()
        self._taken = threading.Condition()  # notified each time a screening worker takes an object
        self._send_queue: queue.Queue[Pending | None] = queue.Queue()
        self._received_at: dict[str, float] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.config.port

    def start(self) -> None:
        """Recover what the spool holds from a previous run, then listen and work."""
        self.screening.start()
        for pending in self.spool.recover():
            if pending.screened:
                self._send_queue.put(pending)
            else:
                self._screen_queue.put(pending.receipt)
        for i in range(self.screening.workers):
            self._spawn(self._screen_loop, f"cxr-dicom-screen-{i}")
        if self.config.send_to is not None:
            for i in range(self.config.send_associations):
                self._spawn(self._send_loop, f"cxr-dicom-send-{i}")
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: 0x0000),
                    (evt.EVT_CONN_OPEN, lambda event: send_at_once(event.assoc))]
        self._server = self.ae.start_server((self.config.host, self.config.port), block=False,
                                            evt_handlers=handlers, ssl_context=self._tls(), contexts=accepted_contexts())
        log.info("listening as %s on %s:%d%s", self.config.ae_title, self.config.host, self.port,
                 " (TLS)" if self.config.tls_cert else "")

    def stop(self) -> None:
        self._stopping.set()
        with self._taken:
            self._taken.notify_all()  # responses held for flow control go out now
        if self._server is not None:
            self._server.shutdown()
        for _ in self._threads:
            self._screen_queue.put(None)
            self._send_queue.put(None)
        for thread in self._threads:
            thread.join()
        self.screening.close()
        self.spool.close()

    def idle(self) -> bool:
        """Nothing waiting to be screened or sent (the spool holds no unfinished receipt)."""
        return not any(self.spool.received.glob("*.dcm"))

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _tls(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        return context

    def _on_store(self, event) -> int:
        status = self._store(event)
        if self.on_status is not None:
            self.on_status(status)
        return status

    def _store(self, event) -> int:
        """Spool the object, then succeed; a DIMSE failure for what cannot be read or stored."""
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID)
        calling = event.assoc.requestor.ae_title
        try:
            data = event.encoded_dataset()
            ds = pydicom.dcmread(io.BytesIO(data))
            matches = str(ds.SOPInstanceUID) == sop_uid and str(ds.SOPClassUID) == str(request.AffectedSOPClassUID)
            problem = truncated_pixels(ds)
        except Exception as exc:  # pydicom raises many types on a corrupt dataset
            return self._refuse(sop_uid, CANNOT_UNDERSTAND, f"corrupt dataset from {calling} ({type(exc).__name__})")
        if problem:
            return self._refuse(sop_uid, CANNOT_UNDERSTAND, f"dataset from {calling}: {problem}")
        if not matches:
            return self._refuse(sop_uid, DOES_NOT_MATCH, f"dataset from {calling} does not match the C-STORE request's SOP class/instance")
        try:
            receipt = self.spool.store(data)
        except OSError as exc:
            return self._refuse(sop_uid, OUT_OF_RESOURCES, f"spool not writable ({exc.strerror or exc})")
        self._received_at[receipt] = time.monotonic()
        log.debug("received %s (%s) from %s as %s", sop_uid, ds.get("Modality", "?"), calling, receipt)
        self._screen_queue.put(receipt)
        self._hold_while_busy()
        return 0x0000

    def _hold_while_busy(self) -> None:
        """Flow control for a burst: hold this association's response while the workers have more waiting than
        they take next (at most :data:`ACK_HOLD_S`), so that the sender sends its next object when the node can
        take it. Unheld, a 200-image burst piles into the spool at once and every object waits for all before it
        (p95 of receive-to-result 11 s instead of about 1 s in benchmarks/dicom_node.py); the rate is the same."""
        limit = WAITING_PER_WORKER * self.screening.workers
        deadline = time.monotonic() + ACK_HOLD_S
        with self._taken:
            while self._screen_queue.qsize() > limit and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._taken.wait(remaining)

    def _refuse(self, sop_uid: str, status: int, reason: str) -> int:
        log.warning("refused %s: %s (status 0x%04X)", sop_uid, reason, status)
        notify(self.screener.observers, ScreeningEvent("dicom", sop_uid, 0.0, None, reason))
        return status

    def _screen_loop(self) -> None:
        while (receipt := self._screen_queue.get()) is not None:
            with self._taken:
                self._taken.notify_all()
            try:
                self._screen_one(receipt)
            except Exception as exc:  # a bug must not stop the node: the object is set aside, and said so
                log.error("screening %s failed (%s: %s); kept in %s", receipt, type(exc).__name__, exc, self.spool.failed)
                self.spool.set_aside(receipt, f"{type(exc).__name__}: {exc}")

    def _screen_one(self, receipt: str) -> None:
        received_at = self._received_at.pop(receipt, None)
        screened = self.screening.screen(self.spool.received_path(receipt), receipt)
        outcome = screened.outcome
        self.screener.report(outcome, receipt, time.monotonic() if received_at is None else received_at)
        sop_uid = outcome.sop_instance_uid
        if not outcome.screened:
            log.info("not screened %s: %s", sop_uid or receipt, outcome.reason)
            self.spool.record(receipt, "skipped", reason=outcome.reason)
            self.spool.finish(receipt)
            return
        for kind, data in screened.files.items():
            _write(self.spool.result_path(receipt, kind), data)
            if self.config.out is not None:
                _write(result_path(self.config.out, sop_uid, kind), data)
        kinds = list(screened.files)
        self.spool.record(receipt, "screened", kinds=kinds, sop=sop_uid)
        prediction = outcome.prediction
        log.info("screened %s: %s -> %s", sop_uid, prediction.label if prediction else "?", ", ".join(kinds))
        if self.config.send_to is None:
            self.spool.finish(receipt)
        else:
            self._send_queue.put(Pending(receipt, True, kinds))

    def _send_loop(self) -> None:
        """One of :attr:`NodeConfig.send_associations` senders, each on its own association to the destination: a
        C-STORE waits for its response (22-80 ms from Orthanc on loopback), so one sender alone would cap the rate
        near 6-20 images/s whatever the CPUs do. A destination that is down is retried with back-off."""
        sender = Sender(self.config.send_to, self.config.ae_title)
        rejections: dict[str, int] = {}
        attempt = 0
        pending: Pending | None = None
        while not self._stopping.is_set():
            if pending is None:
                pending = self._next_to_send(sender)
                if pending is None:
                    break
            try:
                self._send_pending(sender, pending, rejections)
            except DestinationDown as exc:
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                with self._send_queue.mutex:
                    waiting = [pending.receipt, *(p.receipt for p in self._send_queue.queue if p is not None)]
                named = ", ".join(waiting[:5]) + (", ..." if len(waiting) > 5 else "")
                log.warning("destination %s down (%s): %d object(s) wait in the spool (%s); retry in %g s",
                            self.config.send_to, exc, len(waiting), named, delay)
                self._stopping.wait(delay)
                continue
            attempt = 0
            pending = None
        sender.close()

    def _next_to_send(self, sender: Sender) -> Pending | None:
        """The next results to send (None: stop). The association stays open while results keep coming, and is
        released once none came for :data:`SENDER_IDLE_S` (the PACS need not hold it for us): released whenever
        the queue ran dry, a paced stream of images opened an association for almost every image (30 ms and 8 ms of
        CPU, both ends, each on loopback)."""
        try:
            return self._send_queue.get(timeout=SENDER_IDLE_S)
        except queue.Empty:
            sender.close()
            return self._send_queue.get()

    def _send_pending(self, sender: Sender, pending: Pending, rejections: dict[str, int]) -> bool:
        """Send the unsent results of one receipt; True when it is finished (sent, or set aside)."""
        for kind in list(pending.unsent):
            status = sender.send(self.spool.result_path(pending.receipt, kind))
            if status in SUCCESS_OR_WARNING:
                self.spool.record(pending.receipt, "sent", kind=kind)
                pending.unsent.remove(kind)
                continue
            count = rejections[pending.receipt] = rejections.get(pending.receipt, 0) + 1
            if count >= MAX_REJECTIONS:
                log.error("destination %s refused the %s of %s %d times (status 0x%04X); kept in %s",
                          self.config.send_to, kind, pending.receipt, count, status, self.spool.failed)
                self.spool.set_aside(pending.receipt, f"destination status 0x{status:04X}")
                return True
            raise DestinationDown(f"status 0x{status:04X} for the {kind} of {pending.receipt}")
        rejections.pop(pending.receipt, None)
        self.spool.finish(pending.receipt)
        log.debug("sent the results of %s to %s", pending.receipt, self.config.send_to)
        return True


def _write(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
