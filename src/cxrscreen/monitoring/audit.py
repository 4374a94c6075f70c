"""The audit log: one JSON line per screened (or refused) image, appended, flushed and fsync'd line by line.

A line holds the UTC time, the front door, the input id (SOPInstanceUID or content hash), the model's name,
version and checkpoint sha256, the label, the probabilities, the decision (rule and cut-off), the guard's score
and flag, whether lungs were found, the latency, and for an unscreened input the reason. Never a file name, a
patient name, ID or birth date.

Each line goes to the file in one ``write`` on a descriptor opened ``O_APPEND`` and is fsync'd before the observer
returns (a request is answered only once its line is on disk; ~0.1 ms on a local disk, see
benchmarks/monitor.py): a process killed at any moment loses at most the line it was writing. A log that ends in
such a torn line gets a newline before the next writer's first line, and :func:`read_audit_log` skips torn lines.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxrscreen.errors import AuditLogError
from cxrscreen.hashing import file_sha256
from cxrscreen.monitoring.events import ScreeningEvent

FORMAT = "cxrscreen-audit/1"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model screened: its name, version, classes and the sha256 of its file."""

    name: str
    version: str
    sha256: str
    classes: tuple[str, ...]

    @classmethod
    def of(cls, predictor: Any) -> ModelIdentity:
        """The identity of a loaded :class:`~cxrscreen.inference.predictor.Predictor` (hashes its file once)."""
        meta = predictor.meta
        return cls(meta.name, meta.version, file_sha256(predictor.model_path), tuple(predictor.classes))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "classes": list(self.classes)}


def audit_record(event: ScreeningEvent, model: ModelIdentity, when: datetime | None = None) -> dict[str, Any]:
    """The audit line of ``event`` as a dict (see the module's docstring); ``when`` defaults to now (UTC)."""
    when = when or datetime.now(timezone.utc)
    prediction = event.prediction
    record: dict[str, Any] = {
        "format": FORMAT,
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "door": event.door,
        "input_id": event.input_id,
        "model": model.name,
        "model_version": model.version,
        "checkpoint_sha256": model.sha256,
        "screened": prediction is not None,
        "label": None, "probabilities": None, "decision": None,
        "guard_score": None, "guard_flag": None, "lungs_found": None,
        "latency_s": round(float(event.latency_s), 6),
        "reason": event.reason,
    }
    if prediction is not None:
        record.update(
            label=prediction.label,
            probabilities={c: round(float(p), 6) for c, p in prediction.probabilities.items()},
            decision=None if prediction.decision is None else {
                key: value for key, value in prediction.decision.to_dict().items() if key != "text"},
            guard_score=None if prediction.ood_score is None else round(float(prediction.ood_score), 6),
            guard_flag=None if prediction.ood_score is None else not prediction.in_distribution,
            lungs_found=prediction.lungs_found,
        )
    return record


class AuditLog:
    """An observer appending one line per event to ``path`` (created with the user's umask, parents included).

    Thread-safe (a server's workers share one), and safe beside other processes appending to the same file."""

    def __init__(self, path: str | os.PathLike, model: ModelIdentity):
        self.path = Path(path)
        self.model = model
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if ends_torn(self.path):
                self._write(b"\n")  # the torn line of a killed writer stays a line of its own
        except OSError as exc:
            raise AuditLogError(f"{self.path}: cannot open the audit log ({exc.strerror or exc})") from None

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def __call__(self, event: ScreeningEvent) -> None:
        line = json.dumps(audit_record(event, self.model), separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            self._write(line.encode("utf-8"))

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ends_torn(path: Path) -> bool:
    """Whether the file is non-empty and its last byte is not a newline."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


@dataclass
class AuditLogContents:
    """The lines of a log that parsed (``records``, in order) and those skipped (``skipped``: (line number, why))."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per skipped line, for stderr."""
        return [f"{self.path}: line {number} skipped ({why})" for number, why in self.skipped]


def read_audit_log(path: str | os.PathLike) -> AuditLogContents:
    """Every complete audit line of ``path``; torn or foreign lines are skipped and listed. An
    :class:`AuditLogError` when the file cannot be read, is empty, or holds no audit line at all."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditLogError(f"{path}: cannot read the audit log ({exc.strerror or exc})") from None
    contents = AuditLogContents(path)
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        torn = number == len(lines)  # no newline after it: the writer was stopped in the middle of it
        try:
            record = json.loads(raw)
        except ValueError:
            contents.skipped.append((number, "torn line" if torn else "not JSON: a torn or foreign line"))
            continue
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            contents.skipped.append((number, f"not a {FORMAT} line"))
            continue
        contents.records.append(record)
    if not contents.records:
        why = "it is empty" if not data.strip() else f"none of its {len(contents.skipped)} line(s) is a {FORMAT} line"
        raise AuditLogError(f"{path}: no screened image to monitor: {why}")
    return contents
