"""Prometheus metrics of a front door, in its own registry (so that two servers in one process, or tests, never
share counters), as an observer of :class:`~cxrscreen.monitoring.events.ScreeningEvent` plus a request counter the
door calls itself. The drift window, when there is one, is read at scrape time."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from cxrscreen.errors import ConfigError
from cxrscreen.monitoring.audit import ModelIdentity
from cxrscreen.monitoring.events import ScreeningEvent

if TYPE_CHECKING:  # the drift window loads scipy; counting images needs none of it
    from cxrscreen.monitoring.live import DriftWindow

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class DriftCollector:
    """The drift window's latest look as gauges, computed when Prometheus scrapes."""

    def __init__(self, drift: DriftWindow):
        self.drift = drift

    def collect(self) -> Iterator[Metric]:
        latest = self.drift.latest
        alarm = GaugeMetricFamily("cxrscreen_drift_alarm", "1 while the latest drift look has a quantity that moved")
        alarm.add_metric([], 1.0 if latest and latest.alarm else 0.0)
        yield alarm
        images = GaugeMetricFamily("cxrscreen_drift_window_images", "Screened images in the latest drift look")
        images.add_metric([], float(latest.images if latest else 0))
        yield images
        p_value = GaugeMetricFamily("cxrscreen_drift_corrected_p", "Corrected p-value of each quantity in the "
                                    "latest drift look (moved below the alpha of the drift settings)", labels=["quantity"])
        moved = GaugeMetricFamily("cxrscreen_drift_moved", "1 when the quantity moved in the latest look",
                                  labels=["quantity"])
        for quantity in latest.quantities if latest else []:
            p_value.add_metric([quantity.name], quantity.corrected_p)
            moved.add_metric([quantity.name], 1.0 if quantity.moved else 0.0)
        yield p_value
        yield moved


class ScreeningMetrics:
    """An observer counting inputs by outcome, screened images by label, guard flags and latency; with
    :meth:`count_request` for the door's own requests (HTTP statuses, DICOM statuses) and errors by kind."""

    def __init__(self, model: ModelIdentity, drift: DriftWindow | None = None,
                 registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("cxrscreen_requests", "Requests by front door, endpoint and status",
                                ["door", "endpoint", "status"], registry=r)
        self.errors = Counter("cxrscreen_errors", "Failed requests by front door and kind", ["door", "kind"], registry=r)
        self.images = Counter("cxrscreen_images", "Inputs by front door and outcome (screened or unscreened)",
                              ["door", "outcome"], registry=r)
        self.labels = Counter("cxrscreen_screened", "Screened images by front door and label", ["door", "label"],
                              registry=r)
        self.guard_flags = Counter("cxrscreen_guard_flags", "Images the OOD guard flagged as unlike the training "
                                   "X-rays", ["door"], registry=r)
        self.latency = Histogram("cxrscreen_latency_seconds", "Seconds from receiving an input to its result",
                                 ["door"], buckets=LATENCY_BUCKETS, registry=r)
        Info("cxrscreen_model", "The model in use", registry=r).info(
            {"name": model.name, "version": model.version, "sha256": model.sha256, "classes": ",".join(model.classes)})
        if drift is not None:
            r.register(DriftCollector(drift))

    def __call__(self, event: ScreeningEvent) -> None:
        prediction = event.prediction
        self.images.labels(event.door, "screened" if prediction else "unscreened").inc()
        self.latency.labels(event.door).observe(event.latency_s)
        if prediction is not None:
            self.labels.labels(event.door, prediction.label).inc()
            if prediction.ood_score is not None and not prediction.in_distribution:
                self.guard_flags.labels(event.door).inc()

    def count_request(self, door: str, endpoint: str, status: int | str) -> None:
        """One request answered with ``status``; an HTTP status of 400 or more also counts as an error of its
        kind (``413 Content Too Large``...). Other doors pass their own status and count errors themselves with
        :meth:`count_error`."""
        self.requests.labels(door, endpoint, str(status)).inc()
        if isinstance(status, int) and status >= 400:
            try:
                kind = f"{status} {HTTPStatus(status).phrase}"
            except ValueError:
                kind = str(status)
            self.count_error(door, kind)

    def count_error(self, door: str, kind: str) -> None:
        self.errors.labels(door, kind).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (content type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def serve_metrics(metrics: ScreeningMetrics, port: int, host: str = "127.0.0.1"):
    """Serve ``metrics`` at ``http://host:port/metrics`` on a daemon thread (for a door without a web server of
    its own, such as the DICOM node's ``--metrics-port``); returns prometheus_client's (server, thread)."""
    try:
        return start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
