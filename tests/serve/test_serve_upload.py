"""Uploads stay in memory and an oversized one is refused without being read whole."""

from __future__ import annotations

import asyncio
import tempfile
import warnings
from pathlib import Path

import pytest
from starlette.requests import Request

from cxrscreen.serve.app import create_app
from cxrscreen.serve.settings import ServeSettings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

BOUNDARY = b"cxrscreen-test-boundary"
CHUNK = 64 * 1024


def multipart_head(filename: str) -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )


def call_app(app, chunks: list[bytes], extra_headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, int]:
    """Send a streamed POST /v1/predict straight to the ASGI app; returns (status, chunks the app pulled)."""
    pulled = 0
    statuses: list[int] = []

    async def receive() -> dict:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        await asyncio.sleep(3600)  # a real client would still be sending; the app must not wait for it

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY), *extra_headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    return statuses[0], pulled


def test_streamed_upload_over_the_cap_is_refused_early(predictor, covid_jpeg: Path) -> None:
    app = create_app(predictor, ServeSettings(max_upload_mb=0.25))
    real = covid_jpeg.read_bytes()
    body = multipart_head("huge.jpg") + real + bytes(100 * CHUNK)  # about 6.5 MB, sent without Content-Length
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    status, pulled = call_app(app, chunks)
    assert status == 413
    # The cap is 0.25 MiB of file plus 64 KiB of multipart room: reading stops within a chunk of it.
    assert pulled <= (int(0.25 * 2**20) + 64 * 1024) // CHUNK + 1 < len(chunks)


def test_declared_length_over_the_cap_is_refused_before_reading(predictor) -> None:
    app = create_app(predictor, ServeSettings(max_upload_mb=1))
    status, pulled = call_app(app, [bytes(CHUNK)] * 4, [(b"content-length", str(500 * 2**20).encode())])
    assert (status, pulled) == (413, 0)


@pytest.fixture
def temp_file_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    """Every temporary file or folder created through :mod:`tempfile`, in a fresh, watched temp dir."""
    watched = tmp_path / "tmp"
    watched.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(watched))
    calls: list[str] = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        original = getattr(tempfile, name)

        def recording(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, recording)
    return calls, watched


def test_several_mb_upload_leaves_nothing_on_disk(predictor, covid_jpeg: Path, png_of, temp_file_calls) -> None:
    calls, watched = temp_file_calls
    big_png = png_of(covid_jpeg, size=2048, bits=16, compress_level=0)
    assert len(big_png) > 8 * 10**6
    app = create_app(predictor, ServeSettings())

    @app.post("/starlette-form")
    async def starlette_form(request: Request) -> dict:
        """Control: Starlette's own form parsing of the same upload does spool to a temp file."""
        form = await request.form()
        return {"size": len(await form["file"].read())}

    client = TestClient(app)
    response = client.post("/v1/predict", files={"file": ("big.png", big_png, "image/png")})
    assert response.status_code == 200, response.json()
    assert response.json()["format"] == "png"
    assert calls == [] and list(watched.iterdir()) == []

    response = client.post("/starlette-form", files={"file": ("big.png", big_png, "image/png")})
    assert response.json() == {"size": len(big_png)}
    assert "TemporaryFile" in calls
