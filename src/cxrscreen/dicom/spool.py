"""The node's spool: what it acknowledged is on disk before it says so, and a journal says how far each object got.

Layout under the spool folder::

    received/<receipt>.dcm          each received object, written atomically before the C-STORE success
    failed/<receipt>.dcm            objects set aside: screening raised, or the destination kept refusing them
    results/<receipt>/<kind>.dcm    its results, written before the journal says "screened"
    journal.jsonl                   one JSON line per step: screened (with the result kinds), skipped, sent, done

A receipt id (``<nanoseconds>-<counter>``) names one reception, so an object sent twice is screened twice (its
results have the same UIDs: the PACS replaces them). After a crash (kill -9 included), :meth:`Spool.recover` reads
the journal: received but not screened -> screen; screened -> send the kinds not yet sent; done -> forget. Each
line is flushed and fsynced before the step after it, so a result is sent again only when the process died between
the destination's acknowledgement and that line (a few milliseconds), and then it replaces the same instance.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrscreen.io_utils import atomic_write

JOURNAL = "journal.jsonl"


@dataclass
class Pending:
    """A receipt still to finish: ``screened`` (its results are in the spool) and the ``unsent`` kinds."""

    receipt: str
    screened: bool = False
    unsent: list[str] = field(default_factory=list)


class Spool:
    """The spool folder ``root`` (created if missing). Thread-safe: the receiving, screening and sending threads
    share it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.received = self.root / "received"
        self.results = self.root / "results"
        self.failed = self.root / "failed"
        self.received.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._journal = open(self.root / JOURNAL, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._journal.close()

    def store(self, data: bytes) -> str:
        """Write a received object (DICOM file bytes) durably; its receipt id."""
        receipt = f"{time.time_ns():020d}-{next(self._counter):06d}"
        with atomic_write(self.received_path(receipt), "wb") as fh:
            fh.write(data)
        _fsync_dir(self.received)
        return receipt

    def received_path(self, receipt: str) -> Path:
        return self.received / f"{receipt}.dcm"

    def result_path(self, receipt: str, kind: str) -> Path:
        return self.results / receipt / f"{kind}.dcm"

    def record(self, receipt: str, event: str, **details) -> None:
        """Append one journal line, durably (flushed and fsynced) before returning."""
        line = json.dumps({"receipt": receipt, "event": event, **details}, separators=(",", ":"))
        with self._lock:
            self._journal.write(line + "\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())

    def finish(self, receipt: str) -> None:
        """Journal ``done`` and remove the receipt's files."""
        self.record(receipt, "done")
        self.received_path(receipt).unlink(missing_ok=True)
        shutil.rmtree(self.results / receipt, ignore_errors=True)

    def set_aside(self, receipt: str, reason: str) -> None:
        """Move a receipt that cannot be finished (a bug, a destination that keeps refusing it) to ``failed/``
        for a person to look at, and journal it as done."""
        self.failed.mkdir(parents=True, exist_ok=True)
        source = self.received_path(receipt)
        if source.exists():
            os.replace(source, self.failed / source.name)
        self.record(receipt, "set_aside", reason=reason)
        self.finish(receipt)

    def recover(self) -> list[Pending]:
        """The receipts a previous run left unfinished, oldest first; leftovers of finished ones are removed and
        the journal is rewritten with the unfinished ones' lines only (it does not grow without end)."""
        states: dict[str, Pending] = {}
        finished: set[str] = set()
        lines: dict[str, list[str]] = {}
        journal = self.root / JOURNAL
        with self._lock:
            text = journal.read_text(encoding="utf-8") if journal.exists() else ""
        for raw in text.splitlines():
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: its step did not complete, so it is done again
            receipt, event = entry.get("receipt"), entry.get("event")
            state = states.setdefault(receipt, Pending(receipt))
            lines.setdefault(receipt, []).append(raw)
            if event == "screened":
                state.screened, state.unsent = True, list(entry.get("kinds", []))
            elif event == "sent" and entry.get("kind") in state.unsent:
                state.unsent.remove(entry["kind"])
            elif event in ("done", "skipped"):
                finished.add(receipt)
        pending = []
        for path in sorted(self.received.glob("*.dcm")):
            receipt = path.stem
            if receipt in finished:
                self.finish(receipt)
                continue
            state = states.get(receipt, Pending(receipt))
            if state.screened and any(not self.result_path(receipt, kind).exists() for kind in state.unsent):
                state = Pending(receipt)  # results lost with the folder: screen again
            pending.append(state)
        keep = {state.receipt for state in pending}
        with self._lock:
            with atomic_write(journal, "w") as fh:
                for receipt in sorted(keep):
                    fh.writelines(line + "\n" for line in lines.get(receipt, []))
            self._journal.close()
            self._journal = open(journal, "a", encoding="utf-8")
        for folder in self.results.iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)
        return pending


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut, not only a killed process, keeps the file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
