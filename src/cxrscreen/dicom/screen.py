"""Screen one DICOM object into its result objects: the Python API under ``cxrscreen dicom screen`` and the node.

:class:`DicomScreener` holds a loaded :class:`~cxrscreen.inference.predictor.Predictor` and turns the bytes of a
DICOM file into a :class:`ScreenOutcome`: the prediction and the result datasets (``sr``, ``sc``), or the reason
it was not screened. Every outcome is reported to the observers as a
:class:`~cxrscreen.monitoring.events.ScreeningEvent` (door ``dicom``, input id the SOPInstanceUID).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pydicom
from pydicom.dataset import Dataset

from cxrscreen.data.dicom import decode_dataset
from cxrscreen.data.imageio import is_dicom_bytes
from cxrscreen.dicom.codes import Algorithm
from cxrscreen.dicom.sc import build_sc
from cxrscreen.dicom.select import refusal
from cxrscreen.dicom.sr import build_sr
from cxrscreen.dicom.uids import KINDS, SC, SR
from cxrscreen.errors import ConfigError, CxrError
from cxrscreen.inference.results import Prediction
from cxrscreen.io_utils import atomic_write
from cxrscreen.monitoring.events import Observer, ScreeningEvent, notify

DOOR = "dicom"


@dataclass
class ScreenOutcome:
    """What became of one DICOM object: ``sop_instance_uid`` ("" when it has none), the ``prediction`` and the
    ``results`` ({kind: dataset}, kinds in :data:`~cxrscreen.dicom.uids.KINDS`), or ``reason`` why it was not
    screened. ``failed``: the object could not be read (corrupt, not DICOM, undecodable pixels), as opposed to
    deliberately not screened (a lateral, a CT)."""

    sop_instance_uid: str
    prediction: Prediction | None = None
    results: dict[str, Dataset] = field(default_factory=dict)
    reason: str | None = None
    failed: bool = False

    @property
    def screened(self) -> bool:
        return self.prediction is not None


def parse_outputs(text: str) -> tuple[str, ...]:
    """``"sr,sc"`` (the CLI's ``--outputs``) -> ``("sr", "sc")``; a :class:`ConfigError` for anything else."""
    kinds = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in KINDS]
    if not kinds or unknown:
        raise ConfigError(f"--outputs {text!r}: expected a comma-separated list of {', '.join(KINDS)}")
    return kinds


class DicomScreener:
    """Screens DICOM objects with ``predictor`` into the result kinds ``outputs``, reporting to ``observers``."""

    def __init__(self, predictor, outputs: Sequence[str] = KINDS, observers: Sequence[Observer] = ()):
        self.predictor = predictor
        self.outputs = tuple(outputs)
        self.observers = tuple(observers)
        self.algorithm = Algorithm.of(predictor)

    def warm_up(self) -> None:
        """Load now what the first image would wait for: the torch network, when Grad-CAM needs it (a backend
        without Grad-CAM maps; a node calls this before it listens, so the first C-STORE's results are not seconds
        late)."""
        if SC in self.outputs and not self.predictor.backend.explains:
            self.predictor.torch_model

    def screen(self, data: bytes, name: str, received_at: float | None = None) -> ScreenOutcome:
        """Screen the DICOM file ``data`` (``name`` labels it in messages: a path, never patient data).
        ``received_at``: ``time.monotonic()`` when it arrived (latency of the observers' event; default now)."""
        start = time.monotonic() if received_at is None else received_at
        outcome = self.screen_quietly(data, name)
        self.report(outcome, name, start)
        return outcome

    def report(self, outcome: ScreenOutcome, name: str, received_at: float) -> None:
        """Tell the observers about ``outcome`` (latency from ``received_at``, a ``time.monotonic()``)."""
        notify(self.observers, ScreeningEvent(DOOR, outcome.sop_instance_uid or name, time.monotonic() - received_at,
                                              outcome.prediction, outcome.reason))

    def screen_quietly(self, data: bytes, name: str) -> ScreenOutcome:
        """:meth:`screen` without telling the observers (a worker process screens, the node reports)."""
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:  # pydicom raises many types on data that is not DICOM or is truncated
            return ScreenOutcome("", reason=f"not a readable DICOM file ({type(exc).__name__})", failed=True)
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        reason = refusal(ds) or _missing_identity(ds)
        if reason:
            return ScreenOutcome(sop_uid, reason=reason)
        try:
            image = decode_dataset(ds, name)
        except CxrError as exc:
            return ScreenOutcome(sop_uid, reason=str(exc).removeprefix(f"{name}: "), failed=True)
        heatmap = None
        if SC in self.outputs:  # the Grad-CAM of the decided class, from the same forward pass where it can
            prediction, explanation = self.predictor.predict_and_explain(image, name=sop_uid, overlay=False)
            heatmap = explanation.heatmap if prediction.in_distribution else None
        else:
            prediction = self.predictor.predict(image, name=sop_uid)
        results: dict[str, Dataset] = {}
        if SR in self.outputs:
            results[SR] = build_sr(ds, prediction, self.algorithm)
        if SC in self.outputs:
            results[SC] = build_sc(ds, image, heatmap, prediction, self.algorithm)
        return ScreenOutcome(sop_uid, prediction, results)


def _missing_identity(ds: Dataset) -> str | None:
    """A result joins the source's study: without these it cannot."""
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SOPClassUID"):
        if not str(ds.get(keyword, "") or "").strip():
            return f"no {keyword}: a result could not join its study"
    return None


def result_path(out: Path, source_sop_uid: str, kind: str) -> Path:
    """Where a result is written: ``<out>/<source SOPInstanceUID>_<kind>.dcm`` (the same file on a re-run)."""
    return out / f"{source_sop_uid}_{kind}.dcm"


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (preamble and file meta), atomically."""
    with atomic_write(path, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
    return path


def write_results(outcome: ScreenOutcome, out: Path) -> list[Path]:
    """Write each result of ``outcome`` under ``out`` (:func:`result_path`); the paths written, in kind order."""
    return [write_dataset(ds, result_path(out, outcome.sop_instance_uid, kind)) for kind, ds in outcome.results.items()]


@dataclass
class DicomFiles:
    """The DICOM files of the paths a user named: ``files`` to screen, ``refused`` ({path: reason}: named files that
    are missing or not DICOM) and ``skipped`` ({folder: count} of files in folders that are not DICOM)."""

    files: list[Path] = field(default_factory=list)
    refused: dict[Path, str] = field(default_factory=dict)
    skipped: dict[Path, int] = field(default_factory=dict)


def dicom_files(paths: Sequence[str | Path]) -> DicomFiles:
    """Files and folders (recursed, hidden names left out) -> their DICOM files, told by the ``DICM`` preamble.
    A result must carry the source's patient and study, so a PNG or JPEG is refused, not screened."""
    listing = DicomFiles()
    for path in map(Path, paths):
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if is_dicom_file(file):
                    listing.files.append(file)
                else:
                    listing.skipped[path] = listing.skipped.get(path, 0) + 1
        elif not path.exists():
            listing.refused[path] = "file not found"
        elif not is_dicom_file(path):
            listing.refused[path] = "not a DICOM file (a result must carry the source's patient and study)"
        else:
            listing.files.append(path)
    return listing


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts with the DICOM file preamble and ``DICM`` (PS3.10)."""
    try:
        with open(path, "rb") as fh:
            return is_dicom_bytes(fh.read(132))
    except OSError:
        return False


def screen_files(files: Sequence[Path], out: Path, screener: DicomScreener):
    """Screen each file and write its results under ``out``: yields ``(path, outcome, written paths)`` in order."""
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield path, ScreenOutcome("", reason=f"cannot read ({exc.strerror or exc})", failed=True), []
            continue
        outcome = screener.screen(data, str(path))
        yield path, outcome, write_results(outcome, out) if outcome.screened else []
