"""Sending results to the PACS by C-STORE: one association kept open while there is work, and back-off while the
destination is down (the results wait in the spool meanwhile)."""

from __future__ import annotations

import logging
import re
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from cxrscreen.errors import ConfigError

log = logging.getLogger("cxrscreen.dicom")
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # explicit, implicit VR little endian
SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB007, 0xB006}
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # then every 30 s


@dataclass(frozen=True)
class Destination:
    """A DICOM node to send to: ``ae_title`` at ``host``:``port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """``AET@HOST:PORT`` (the CLI's ``--send-to``) -> a :class:`Destination`; a :class:`ConfigError` otherwise."""
        match = re.fullmatch(r"([^@]{1,16})@([^:@\s]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", text.strip())
        if not match or not 0 < int(match.group(3)) < 65536:
            raise ConfigError(f"--send-to {text!r}: expected AET@HOST:PORT (AE title of at most 16 characters)")
        return cls(match.group(1).strip(), match.group(2).strip("[]"), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


_chunked = threading.Lock()
_chunked_senders = 0  # C-STOREs under files_sent_as_stored now
_chunked_before = False  # the setting before the first of them


@contextmanager
def files_sent_as_stored():
    """While it lasts, pynetdicom sends a file's bytes as they are stored instead of decoding and re-encoding the
    dataset (a third of an SR's cost). The switch is pynetdicom's module setting: on while at least one such
    C-STORE runs, restored after the last (counted: held under a lock around each C-STORE, it let one association
    send at a time while the others waited for its response)."""
    global _chunked_senders, _chunked_before
    with _chunked:
        if _chunked_senders == 0:
            _chunked_before = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        _chunked_senders += 1
    try:
        yield
    finally:
        with _chunked:
            _chunked_senders -= 1
            if _chunked_senders == 0:
                pynetdicom_config.STORE_SEND_CHUNKED_DATASET = _chunked_before


def send_at_once(assoc) -> None:
    """Turn off Nagle's algorithm on ``assoc``'s socket: a small PDU (an SR, a C-STORE response) then goes out at
    once instead of waiting for the peer's delayed ACK (40 ms on Linux; measured on loopback: one SR's C-STORE
    51 ms -> 7 ms)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket: nothing to turn off
            pass


class DestinationDown(Exception):
    """The destination refused or dropped the association: retry later."""


class Sender:
    """C-STOREs result files to ``destination`` as ``ae_title``, over one association reused until idle."""

    def __init__(self, destination: Destination, ae_title: str, timeout_s: float = 30.0):
        self.destination = destination
        self.ae = AE(ae_title=ae_title)
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            for syntax in TRANSFER_SYNTAXES:  # one context each, so that the file's own syntax can be accepted
                self.ae.add_requested_context(sop_class, syntax)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s
        self._assoc = None

    def send(self, path: Path) -> int:
        """C-STORE one DICOM file; its status (success/warning in :data:`SUCCESS_OR_WARNING`, else a failure the
        destination gave). :class:`DestinationDown` when no association or no answer."""
        assoc = self._association()
        try:
            try:
                with files_sent_as_stored():
                    status = assoc.send_c_store(path)
            except ValueError:  # the peer took another transfer syntax: decoded, the dataset is converted
                status = assoc.send_c_store(dcmread(path))
        except (OSError, RuntimeError, ValueError) as exc:
            self.close()
            raise DestinationDown(f"{type(exc).__name__}: {exc}") from None
        if "Status" not in status:  # no answer: the association was aborted or timed out
            self.close()
            raise DestinationDown("no response to C-STORE (association aborted or timed out)")
        return int(status.Status)

    def _association(self):
        if self._assoc is None or not self._assoc.is_established:
            d = self.destination
            assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title)
            if not assoc.is_established:
                raise DestinationDown("association rejected" if assoc.is_rejected else "no association (unreachable?)")
            send_at_once(assoc)
            self._assoc = assoc
        return self._assoc

    def close(self) -> None:
        """Release the association (abort it when it cannot be released)."""
        if self._assoc is not None:
            if self._assoc.is_established:
                self._assoc.release()
            self._assoc = None
