"""What a front door calls to be watched: :func:`build_monitoring` makes the observers its options ask for (audit
log, Prometheus metrics, drift window) for a loaded predictor, and :func:`monitored_predictions` is
:meth:`Predictor.predict_iter` with one event per input handed to them (``cxrscreen predict`` and notebooks)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from cxrscreen.errors import ModelError
from cxrscreen.metrics.reference import OutputReference
from cxrscreen.monitoring.audit import AuditLog, ModelIdentity
from cxrscreen.monitoring.settings import DriftSettings
from cxrscreen.monitoring.events import Observer, ScreeningEvent, content_id, notify
from cxrscreen.monitoring.metrics import ScreeningMetrics

if TYPE_CHECKING:
    from cxrscreen.monitoring.live import DriftWindow


@dataclass
class Monitoring:
    """The observers of one front door: ``observers`` (hand each event to all of them), and each by kind (None
    where not asked for) so the door can serve the metrics and show the drift."""

    model: ModelIdentity | None = None
    observers: list[Observer] = field(default_factory=list)
    audit: AuditLog | None = None
    metrics: ScreeningMetrics | None = None
    drift: DriftWindow | None = None

    def __call__(self, event: ScreeningEvent) -> None:
        notify(self.observers, event)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()

    def __enter__(self) -> Monitoring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stored_reference(meta: Any, where: str | os.PathLike) -> OutputReference | None:
    """The reference a model's metadata carries (None when it was made before checkpoints stored one); a
    :class:`ModelError` naming ``where`` when it is unreadable."""
    if not getattr(meta, "reference", None):
        return None
    try:
        return OutputReference.from_dict(meta.reference)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None


def build_monitoring(predictor: Any, audit_log: str | os.PathLike | None = None, metrics: bool = False,
                     drift: bool = True, drift_settings: DriftSettings | None = None) -> Monitoring:
    """The observers for ``predictor``: an :class:`AuditLog` at ``audit_log``, :class:`ScreeningMetrics` when
    ``metrics``, and a :class:`DriftWindow` when ``drift`` and the model carries a reference (a model made before
    checkpoints stored one gets none: ``drift`` is None, and a door says so). Call :meth:`Monitoring.close` when done (or use it as a context). Asked
    for nothing, it holds no observer and reads nothing (the model file is hashed only for a log or metrics)."""
    if audit_log is None and not metrics and not drift:
        return Monitoring()
    model = ModelIdentity.of(predictor)
    window = None
    reference = stored_reference(predictor.meta, predictor.model_path) if drift else None
    if reference is not None:
        from cxrscreen.monitoring.live import DriftWindow  # scipy.stats: only for a door that keeps a window

        window = DriftWindow(reference, drift_settings)
    counters = ScreeningMetrics(model, window) if metrics else None
    audit = AuditLog(Path(audit_log), model) if audit_log is not None else None
    observers: list[Observer] = [o for o in (audit, counters, window) if o is not None]
    return Monitoring(model, observers, audit, counters, window)


def monitored_predictions(predictor: Any, sources: Sequence[str | os.PathLike], observers: Sequence[Observer],
                          door: str = "predict") -> Iterator[Any]:
    """``predictor.predict_iter(sources)`` (image files), each result also handed to ``observers`` as a
    :class:`ScreeningEvent` (input id: the file's content hash; latency: the time since the previous result,
    each image's share of a streamed batch)."""
    if not observers:  # nothing watches: no file is read twice
        yield from predictor.predict_iter([str(s) for s in sources])
        return
    last = time.perf_counter()
    for source, result in zip(sources, predictor.predict_iter([str(s) for s in sources])):
        now = time.perf_counter()
        try:
            input_id = content_id(Path(source).read_bytes())
        except OSError as exc:
            input_id = f"unreadable:{exc.strerror or exc}"
        screened = hasattr(result, "probabilities")
        notify(observers, ScreeningEvent(door, input_id, now - last, result if screened else None,
                                         None if screened else result.reason))
        last = now
        yield result
