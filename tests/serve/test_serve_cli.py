"""``cxrscreen serve``: flags, one-line errors, and the real command serving on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cxrscreen.cli import main
from cxrscreen.serve.settings import API_KEY_ENV, resolve_api_key


def test_bad_flags_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert main(["serve", "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "cxrscreen: error: --workers must be between 1 and 64, got 0"
    assert main(["serve", "--max-upload-mb", "-1"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err
    missing = tmp_path / "missing.pt"
    assert main(["serve", "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cxrscreen: error: {missing}: model file not found") and err.count("\n") == 1


def test_api_key_comes_from_flag_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert resolve_api_key("from-flag") == "from-flag"
    assert resolve_api_key(None) == "from-env"
    monkeypatch.delenv(API_KEY_ENV)
    assert resolve_api_key(None) is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_command_runs_on_loopback(tiny_checkpoint: Path, covid_jpeg: Path) -> None:
    port = free_port()
    env = {**os.environ, API_KEY_ENV: "env-key", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cxrscreen", "serve", "--model", str(tiny_checkpoint), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up within 60 s"
            time.sleep(0.2)
        assert httpx.get(f"{base_url}/v1/model").status_code == 401
        headers = {"X-API-Key": "env-key"}
        files = {"file": (covid_jpeg.name, covid_jpeg.read_bytes())}
        response = httpx.post(f"{base_url}/v1/predict", files=files, headers=headers, timeout=60)
        assert response.status_code == 200 and response.json()["model"]["name"] == "serve-test-model"
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert server.returncode in (0, -15)
    assert "predict: " in output and covid_jpeg.name not in output  # the log names no file
