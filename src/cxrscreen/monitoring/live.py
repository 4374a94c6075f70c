"""The drift statistic of a running server: the last window of screened images, looked at every ``step`` images
exactly as ``cxrscreen monitor`` looks at a log (:mod:`cxrscreen.monitoring.drift`), so a server and the monitor
of its audit log raise the same alarms."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from cxrscreen.metrics.reference import OutputReference
from cxrscreen.monitoring.drift import MIN_IMAGES, DriftSettings, Observation, WindowResult, look
from cxrscreen.monitoring.events import ScreeningEvent


class DriftWindow:
    """An observer keeping the last ``settings.window`` screened images and the latest look at them."""

    def __init__(self, reference: OutputReference, settings: DriftSettings | None = None):
        self.reference = reference
        self.settings = settings or DriftSettings()
        self._recent: deque[Observation] = deque(maxlen=self.settings.window)
        self._seen = 0
        self._latest: WindowResult | None = None
        self._lock = threading.Lock()

    def __call__(self, event: ScreeningEvent) -> None:
        prediction = event.prediction
        if prediction is None:
            return  # refused inputs are counted by the metrics; the reference describes screened images
        observation = Observation(
            tuple(float(prediction.probabilities[c]) for c in self.reference.classes), prediction.ood_score,
            None if prediction.ood_score is None else not prediction.in_distribution)
        with self._lock:
            self._recent.append(observation)
            self._seen += 1
            if self._seen >= MIN_IMAGES and self._seen % self.settings.step == 0:
                first = self._seen - len(self._recent) + 1
                self._latest = look(self.reference, list(self._recent), self.settings, first)

    @property
    def latest(self) -> WindowResult | None:
        """The latest look (None before ``MIN_IMAGES`` screened images)."""
        with self._lock:
            return self._latest

    def status(self) -> dict[str, Any]:
        """What ``/v1/model`` and the web page show: images seen, the alarm and what moved, the latest look."""
        with self._lock:
            latest, seen = self._latest, self._seen
        return {
            "images_seen": seen,
            "window": self.settings.window,
            "step": self.settings.step,
            "alpha": self.settings.alpha,
            "horizon": self.settings.horizon,
            "alarm": bool(latest and latest.alarm),
            "summary": ("no look yet: fewer than {} screened images".format(MIN_IMAGES) if latest is None
                        else f"images {latest.first}-{latest.last}: " + (latest.describe() if latest.alarm
                                                                         else "nothing moved")),
            "latest": None if latest is None else latest.to_dict(),
            "reference": {"images": self.reference.images, "source": self.reference.source},
        }
