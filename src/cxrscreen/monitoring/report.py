"""``cxrscreen monitor``'s Python side: read an audit log, find the model that wrote it and its reference, and
make every look a monitor watching the log grow would have made (:func:`monitor_log`)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrscreen.errors import AuditLogError, ModelError
from cxrscreen.hashing import file_sha256
from cxrscreen.metrics.reference import OutputReference
from cxrscreen.models.bundled import bundled_models
from cxrscreen.monitoring.audit import AuditLogContents, ModelIdentity, read_audit_log
from cxrscreen.monitoring.drift import DriftSettings, Observation, WindowResult, first_alarm, monitor
from cxrscreen.monitoring.observers import stored_reference


@dataclass
class MonitorReport:
    """The looks over one log (``looks``, oldest first) and what was left out of them."""

    log: AuditLogContents
    model: ModelIdentity
    model_path: Path
    reference: OutputReference
    settings: DriftSettings
    observations: list[Observation]
    looks: list[WindowResult]
    unscreened: int = 0
    other_models: dict[str, int] = field(default_factory=dict)

    @property
    def alarm(self) -> bool:
        """Whether an alarm stands: the latest look has a quantity that moved."""
        return bool(self.looks) and self.looks[-1].alarm

    @property
    def first_alarm(self) -> WindowResult | None:
        return first_alarm(self.looks)

    def notes(self) -> list[str]:
        """What a reader should know besides the looks (skipped lines, other models' lines, too few images)."""
        notes = self.log.notes()
        for sha, count in self.other_models.items():
            notes.append(f"{self.log.path}: {count} line(s) from another model (sha256 {sha[:12]}...) left out")
        if not self.looks:
            notes.append(f"{self.log.path}: only {len(self.observations)} screened image(s) of this model: too few "
                         "for a drift look")
        return notes

    def to_dict(self) -> dict[str, Any]:
        alarm = self.first_alarm
        return {"log": str(self.log.path), "model": {**self.model.to_dict(), "path": str(self.model_path)},
                "reference": {"images": self.reference.images, "source": self.reference.source},
                "settings": vars(self.settings) | {"looks_per_horizon": self.settings.looks_per_horizon},
                "screened": len(self.observations), "unscreened": self.unscreened,
                "skipped_lines": [{"line": n, "why": why} for n, why in self.log.skipped],
                "other_models": self.other_models, "alarm": self.alarm,
                "first_alarm": None if alarm is None else alarm.to_dict(),
                "looks": [look.to_dict() for look in self.looks]}


def read_model_meta(path: Path) -> Any:
    """A model file's metadata without building its network (an ``.onnx`` file's, or a checkpoint's)."""
    if path.suffix.lower() == ".onnx":
        from cxrscreen.inference.onnx_runtime import read_onnx_meta

        return read_onnx_meta(path)
    from cxrscreen.models.checkpoint import ModelMeta, read_checkpoint  # torch: only for a checkpoint

    return ModelMeta.from_dict(read_checkpoint(path)["meta"])


def model_of_log(records: list[dict[str, Any]], model: str | os.PathLike | None, log: Path) -> Path:
    """The model file to hold the log against: ``model`` (a path or bundled name) when given, else the bundled
    model whose file the log's lines name."""
    from cxrscreen.inference.predictor import resolve_model_path

    if model is not None:
        return resolve_model_path(model)
    named = Counter(r.get("checkpoint_sha256") for r in records).most_common(1)[0][0]
    for bundled in bundled_models().values():
        if bundled.path.is_file() and file_sha256(bundled.path) == named:
            return bundled.path
    name = next(r.get("model") for r in records if r.get("checkpoint_sha256") == named)
    raise AuditLogError(f"{log}: written by model {name!r} (sha256 {str(named)[:12]}...), which is not a bundled "
                        "model: pass its file with --model")


def monitor_log(path: str | os.PathLike, model: str | os.PathLike | None = None,
                settings: DriftSettings | None = None) -> MonitorReport:
    """Hold the audit log at ``path`` against the reference of ``model`` (default: the bundled model that wrote
    it). An :class:`AuditLogError` when the log is unreadable or empty, or none of its lines is from that model;
    a :class:`ModelError` when the model carries no reference."""
    settings = settings or DriftSettings()
    contents = read_audit_log(path)
    model_path = model_of_log(contents.records, model, contents.path)
    meta = read_model_meta(model_path)
    identity = ModelIdentity(meta.name, meta.version, file_sha256(model_path), tuple(meta.classes))
    reference = stored_reference(meta, model_path)
    if reference is None:
        raise ModelError(f"{model_path}: carries no drift reference (made before models stored one); retrain or "
                         "adapt it, or for a bundled model run scripts/bundle_reference.py")
    mine = [r for r in contents.records if r.get("checkpoint_sha256") == identity.sha256]
    others = Counter(str(r.get("checkpoint_sha256")) for r in contents.records if r.get("checkpoint_sha256") != identity.sha256)
    if not mine:
        sha, count = others.most_common(1)[0]
        raise AuditLogError(f"{contents.path}: written by another model: its {count} line(s) name sha256 {sha[:12]}..., "
                            f"{model_path} has {identity.sha256[:12]}...")
    try:
        observations = [Observation.from_record(r, reference.classes) for r in mine if r.get("screened")]
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditLogError(f"{contents.path}: a line's probabilities do not fit {model_path}'s classes "
                            f"{', '.join(reference.classes)} ({type(exc).__name__}: {exc})") from None
    return MonitorReport(contents, identity, model_path, reference, settings, observations,
                         monitor(reference, observations, settings), unscreened=sum(not r.get("screened") for r in mine),
                         other_models=dict(others))
