"""One screened (or refused) image, as every front door reports it to its observers.

A front door (``predict``, ``serve``, ``dicom listen``) builds one :class:`ScreeningEvent` per input it was given
and calls each observer (``Callable[[ScreeningEvent], None]``: the audit log, the Prometheus metrics, the drift
window) with it. Events hold no patient name, ID or birth date: ``input_id`` is the DICOM SOPInstanceUID or the
content hash of the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable

from cxrscreen.inference.results import Prediction


@dataclass(frozen=True)
class ScreeningEvent:
    """What happened to one input.

    ``door``: ``predict``, ``serve`` or ``dicom``. ``input_id``: SOPInstanceUID for DICOM, else
    :func:`content_id` of the bytes. ``prediction``: the result, None when the input was not screened, and then
    ``reason`` says why (one line: "lateral view", "modality CT", "not a readable image: ..."). ``latency_s``:
    from receiving the input to its result.
    """

    door: str
    input_id: str
    latency_s: float
    prediction: Prediction | None = None
    reason: str | None = None

    @property
    def screened(self) -> bool:
        return self.prediction is not None


Observer = Callable[[ScreeningEvent], None]


def content_id(data: bytes) -> str:
    """The input id of a file that carries none of its own: ``sha256:<hex>`` of its bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def notify(observers: Iterable[Observer], event: ScreeningEvent) -> None:
    """Hand ``event`` to every observer, in order."""
    for observer in observers:
        observer(event)
