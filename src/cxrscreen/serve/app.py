"""The REST service and its web page.

``create_app(predictor, settings)`` builds the FastAPI application around any object that follows the
Predictor contract (``meta``, ``classes``, ``predict(source, name)``, ``decided_class(prediction)``,
``explain(source, target)``), so tests inject one. Endpoints:

- ``POST /v1/predict`` (multipart field ``file``; ``?explain=true`` adds the Grad-CAM overlay, ``?image=true``
  the decoded X-ray as PNG, e.g. to show a DICOM in a browser): label, ``decision`` (the rule and threshold that
  chose it), probabilities, model, OOD flag, notice.
- ``GET /v1/model``: the model card (classes, input size, metrics, ...) from the checkpoint's metadata.
- ``GET /healthz``: liveness, never behind the API key. ``GET /``: the web page. ``/docs``: OpenAPI.
- ``GET /metrics``: Prometheus metrics, and every upload handed to the audit log and the drift window, when
  ``create_app`` is given a :class:`~cxrscreen.monitoring.observers.Monitoring` (:mod:`cxrscreen.serve.monitor`).

Uploads stay in memory (see :mod:`cxrscreen.serve.upload`); logs carry sizes, formats, labels and timings,
never file names, DICOM tags or pixels. Every error is JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import html
import io
import logging
import math
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException

from cxrscreen import SCREENING_NOTICE, __version__
from cxrscreen.data.imageio import load_xray, sniff_format, to_uint8
from cxrscreen.errors import ConfigError, CxrError, ImageDecodeError
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.monitoring.observers import Monitoring, build_monitoring
from cxrscreen.serve.monitor import drift_status, install_monitoring, report
from cxrscreen.serve.settings import ServeSettings
from cxrscreen.serve.upload import FILE_FIELD, Upload, read_upload

logger = logging.getLogger("cxrscreen.serve")

STATIC_DIR = Path(__file__).parent / "static"
DISPLAY_MAX_SIDE = 1024
PAGE_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
UPLOAD_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FILE_FIELD],
                "properties": {
                    FILE_FIELD: {"type": "string", "format": "binary", "description": "PNG, JPEG or DICOM chest X-ray"}
                },
            }
        }
    },
}


def error_docs(*codes_and_reasons: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers, all of them ``{"error": "..."}``."""
    example = {"application/json": {"example": {"error": "..."}}}
    return {code: {"description": reason, "content": example} for code, reason in codes_and_reasons}


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key, if set")
bearer_token = HTTPBearer(auto_error=False, description="the service's API key as a bearer token, if set")


def create_app(predictor: Any, settings: ServeSettings | None = None, monitoring: Monitoring | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor`` (see :func:`cxrscreen.inference.predictor.load_predictor`),
    its uploads reported to ``monitoring`` (:func:`cxrscreen.monitoring.observers.build_monitoring`)."""
    settings = settings or ServeSettings()
    app = FastAPI(
        title="cxrscreen",
        version=__version__,
        description=f"Chest X-ray screening for COVID-19 and other pneumonias. {SCREENING_NOTICE}",
    )
    app.state.predictor = predictor
    app.state.settings = settings
    app.state.executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="cxrscreen-predict")
    app.state.model_gate = ModelGate()
    install_error_handlers(app)
    install_monitoring(app, monitoring, require_api_key)
    app.include_router(build_api_router(), prefix="/v1")

    @app.get("/healthz", tags=["service"], summary="Liveness check (no API key needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(render_page(settings), headers={"Content-Security-Policy": PAGE_SECURITY_POLICY})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def no_sniffing(request: Request, call_next: Callable) -> Any:
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return app


def require_api_key(
    request: Request,
    key: str | None = Depends(api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Depends(bearer_token),
) -> None:
    """401 unless the service has no key or the request carries it (checked before any body is read)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = key or (bearer.credentials if bearer else None)
    if given is None or not secrets.compare_digest(given.encode(), expected.encode()):
        message = "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)"
        raise HTTPException(401, message, {"WWW-Authenticate": "Bearer"})


def build_api_router() -> APIRouter:
    router = APIRouter(
        dependencies=[Depends(require_api_key)],
        tags=["screening"],
        responses=error_docs((401, "API key missing or wrong")),
    )

    @router.post(
        "/predict",
        summary="Screen one chest X-ray (PNG, JPEG or DICOM)",
        openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
        responses=error_docs(
            (400, "malformed multipart body"),
            (413, "upload over the size limit"),
            (415, "not a PNG, JPEG or DICOM file, or not multipart/form-data"),
            (422, "the file could not be decoded, or no 'file' field"),
        ),
    )
    async def predict(
        request: Request,
        explain: bool = Query(False, description="add the Grad-CAM overlay of the predicted class as a base64 PNG"),
        image: bool = Query(False, description="add the decoded X-ray as a base64 PNG (to display DICOM files)"),
    ) -> dict[str, Any]:
        app = request.app
        upload = await read_upload(request, app.state.settings.max_upload_bytes)
        started = time.perf_counter()
        screened: list[Any] = []  # one event per upload: a failing explanation does not report it twice

        def reported(prediction: Any) -> None:
            screened.append(prediction)
            report(app, upload.data, started, prediction)

        try:
            file_format = check_format(upload)
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(
                app.state.executor, analyse_upload, app.state.predictor, app.state.model_gate, upload, explain, image,
                reported,
            )
        except (HTTPException, CxrError) as exc:
            if not screened:
                message = str(getattr(exc, "detail", exc)).splitlines()[0]
                # The audit log keeps no file names: a name may carry a patient's.
                report(app, upload.data, started, reason=message.replace(upload.filename, "upload"))
            raise
        logger.info(
            "predict: %d-byte %s -> %s%s in %.0f ms",
            len(upload.data),
            file_format,
            body["label"],
            " +explain" if explain else "",
            (time.perf_counter() - started) * 1000,
        )
        return json_safe({**body, "format": file_format})

    @router.get("/model", summary="Model card: classes, input size, metrics, training summary")
    async def model(request: Request) -> dict[str, Any]:
        return json_safe({**model_card(request.app.state.predictor), "drift": drift_status(request.app)})

    return router


def check_format(upload: Upload) -> str:
    """``png``/``jpeg``/``dicom`` from the file's first bytes (not its name); 422 if empty, 415 otherwise."""
    if not upload.data:
        raise HTTPException(422, f"{upload.filename}: empty file")
    file_format = sniff_format(upload.data[:132])
    if file_format is None:
        raise HTTPException(
            415, f"{upload.filename}: not a PNG, JPEG or DICOM file (its first bytes match none of these formats)"
        )
    return file_format


class ModelGate:
    """Predictions may share the network across threads; Grad-CAM in torch hooks its layers, so an explanation
    there runs alone (ONNX Runtime's explanations come from the graph and share it like predictions).

    A readers-writer lock that lets a waiting explanation go before newly arriving predictions. ``waiting`` counts
    the threads blocked at the gate (what a test or a log line can observe without guessing at timing).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._sharing = 0
        self._exclusive = False
        self._waiting = 0

    @property
    def waiting(self) -> int:
        with self._condition:
            return self._waiting

    def _wait_for(self, predicate: Callable[[], bool]) -> None:
        """Block (holding the condition's lock) until ``predicate``, counted in :attr:`waiting` meanwhile."""
        if predicate():
            return
        self._waiting += 1
        self._condition.notify_all()  # observers of ``waiting`` wake; other waiters re-check and sleep again
        try:
            self._condition.wait_for(predicate)
        finally:
            self._waiting -= 1

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._wait_for(lambda: not self._exclusive)
            self._sharing += 1
        try:
            yield
        finally:
            with self._condition:
                self._sharing -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._wait_for(lambda: self._sharing == 0)
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


def analyse_upload(predictor: Any, gate: ModelGate, upload: Upload, explain: bool, render: bool,
                   screened: Callable[[Any], None] = lambda prediction: None) -> dict[str, Any]:
    """Decode once, predict (handing the prediction to ``screened``), and optionally explain and render; runs on a
    worker thread."""
    xray = load_xray(upload.data, upload.filename)
    explanation = None
    if explain and predictor.backend_name == "onnx" and predictor.backend.explains:
        with gate.shared():  # Grad-CAM from the graph's maps, in the pass that predicts: no hooks, no second pass
            prediction, explanation = predictor.predict_and_explain(xray, name=upload.filename)
    else:
        with gate.shared():
            prediction = predictor.predict(xray, name=upload.filename)
    screened(prediction)
    meta = predictor.meta
    body = {**prediction.to_dict(), "model": {"name": meta.name, "version": meta.version, "arch": meta.arch}}
    if explain:
        if explanation is None:
            with gate.exclusive():  # the class just predicted (thresholds included, the guard aside)
                explanation = predictor.explain(xray, target=predictor.decided_class(prediction), name=upload.filename)
        body["explanation"] = {"target": explanation.target, "overlay_png": base64_png(explanation.overlay_png)}
    if render:
        body["image_png"] = base64_png(xray_to_png(xray))
    return body


def model_card(predictor: Any) -> dict[str, Any]:
    """What a user should know about the served model, from its checkpoint (no training hashes or paths)."""
    meta = predictor.meta
    return {
        "name": meta.name,
        "version": meta.version,
        "arch": meta.arch,
        "classes": list(meta.classes),
        "input_size": meta.preprocessing.img_size,
        "preprocessing": meta.preprocessing.to_dict(),
        "temperature": meta.temperature,
        "metrics": meta.metrics,
        "train_summary": meta.train_summary,
        "ood_guard": bool(meta.ood),
        "thresholds": dict(predictor.thresholds),
        "known_limits": list(meta.known_limits),
        "train_images_hashed": len(meta.train_hashes),
        "notice": SCREENING_NOTICE,
    }


def xray_to_png(xray: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> bytes:
    """8-bit grey PNG of a float32 (H, W) [0, 1] X-ray, its longest side at most ``max_side``."""
    pil = Image.fromarray(to_uint8(xray), mode="L")
    pil.thumbnail((max_side, max_side), Image.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def base64_png(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats as None and numpy scalars as Python numbers (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def render_page(settings: ServeSettings) -> str:
    """The page's HTML with the notice and the upload limit filled in (so they show before any request)."""
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return template.replace("{{SCREENING_NOTICE}}", html.escape(SCREENING_NOTICE)).replace(
        "{{MAX_UPLOAD_MB}}", f"{settings.max_upload_mb:g}"
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": "one line"}`` with its status (404, 405, 401, 413, 415, 422, 500)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"{request.url.path}: no such endpoint"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = f"{request.url.path}: method {request.method} not allowed"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return error_response(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(CxrError)
    async def cxr_error(request: Request, exc: CxrError) -> JSONResponse:
        status = 422 if isinstance(exc, ImageDecodeError) else 400 if isinstance(exc, ConfigError) else 500
        logger.warning("%s %s -> %d %s", request.method, request.url.path, status, type(exc).__name__)
        return error_response(status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s -> 500 %s", request.method, request.url.path, type(exc).__name__)
        return error_response(500, "internal server error")


def serve(
    settings: ServeSettings,
    model: str | Path | None = None,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    thresholds: dict[str, float] | None = None,
    audit_log: str | Path | None = None,
) -> None:
    """Load the model (the bundled default when ``model`` is None; ``backend``, ``device``, ``threads`` and
    ``thresholds`` as in :func:`cxrscreen.inference.predictor.load_predictor`) and serve it with uvicorn until
    stopped, with ``/metrics``, the drift statistic and, given ``audit_log``, one audit line per upload. Prints
    ``serving on http://HOST:PORT`` once the port is bound (``port=0`` picks a free one)."""
    predictor = load_predictor(model, backend=backend, device=device, threads=threads, thresholds=thresholds)
    monitoring = build_monitoring(predictor, audit_log=audit_log, metrics=True)
    if settings.api_key is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", settings.host)
    listener = listen(settings.host, settings.port)
    config = uvicorn.Config(
        create_app(predictor, settings, monitoring),
        host=settings.host,
        port=settings.port,
        log_config=logging_config(),
        server_header=False,
    )
    print(f"cxrscreen: serving on {base_url(listener)}", flush=True)
    if monitoring.drift is None:
        print(f"cxrscreen: no drift statistic: {predictor.model_path} carries no reference (made before models stored "
              "one)", flush=True)
    with monitoring:
        uvicorn.Server(config).run(sockets=[listener])


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound and listening on (host, port), made before the server starts so that the port it prints
    is the one it serves (``port=0``: the kernel picks a free one, no race with other processes); requests that
    arrive while the app is still starting wait in the backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def logging_config() -> dict[str, Any]:
    """uvicorn's logging setup, with cxrscreen's own log lines going to the same stream."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["cxrscreen"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
