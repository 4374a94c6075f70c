"""What ``serve`` reports to its observers (:mod:`cxrscreen.monitoring`): one event per upload it was given,
``/metrics`` in Prometheus' text format (behind the API key when there is one, like ``/v1/``), and every request
counted by endpoint and status."""

from __future__ import annotations

import time
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from cxrscreen.monitoring.events import ScreeningEvent, content_id
from cxrscreen.monitoring.metrics import CONTENT_TYPE
from cxrscreen.monitoring.observers import Monitoring

DOOR = "serve"


def report(app: FastAPI, data: bytes, started: float, prediction: Any = None, reason: str | None = None) -> None:
    """Hand the observers the event of one upload (``prediction``, or the ``reason`` it was not screened)."""
    monitoring: Monitoring | None = app.state.monitoring
    if monitoring is not None:
        # Only the audit log keeps the input id: without one, no request pays for hashing its upload.
        input_id = content_id(data) if monitoring.audit is not None else ""
        monitoring(ScreeningEvent(DOOR, input_id, time.perf_counter() - started, prediction, reason))


def drift_status(app: FastAPI) -> dict[str, Any] | None:
    """The live drift statistic for ``/v1/model`` and the page (None without a reference)."""
    monitoring: Monitoring | None = app.state.monitoring
    return None if monitoring is None or monitoring.drift is None else monitoring.drift.status()


def install_monitoring(app: FastAPI, monitoring: Monitoring | None, require_api_key: Callable) -> None:
    """Keep ``monitoring`` on the app; with metrics, serve ``/metrics`` and count every request."""
    app.state.monitoring = monitoring
    metrics = monitoring.metrics if monitoring is not None else None
    if metrics is None:
        return

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics (text format)",
             dependencies=[Depends(require_api_key)], response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable) -> Any:
        response = await call_next(request)
        route = request.scope.get("route")
        # Paths that match a route as they are (this app's routes have no parameters; a router's route knows only
        # its path after the router's prefix), a mount's by its own path (/static): unknown paths must not grow
        # the label set.
        path, template = request.url.path, getattr(route, "path", None)
        endpoint = "unmatched" if template is None else path if path.endswith(template) else template
        metrics.count_request(DOOR, endpoint, response.status_code)
        return response
