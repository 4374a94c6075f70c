"""``cxrscreen serve``: flags, one-line errors, and the real command serving on loopback."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import uvicorn

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


def start_server(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``cxrscreen serve --port 0 ...``; returns the process, the base URL it printed, and its output so far
    (the rest is read on a thread). The port is the one the server bound, so no other process can take it first."""
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    announced: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in server.stdout:
            lines.append(line)
            if line.startswith("cxrscreen: serving on "):
                announced.put(line.split()[-1])
        announced.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        base_url = announced.get(timeout=120)
    except queue.Empty:
        server.kill()
        raise AssertionError("the server printed no address within 120 s") from None
    assert base_url is not None, "".join(lines)
    return server, base_url, lines


@pytest.mark.slow
def test_serve_command_runs_on_loopback(tiny_checkpoint: Path, covid_jpeg: Path, predictor) -> None:
    # A threshold of 0 passes its class for every image: the label then shows the flag reached the model.
    forced = next(c for c in predictor.classes if c != predictor.predict(covid_jpeg).top_class)
    env = {**os.environ, API_KEY_ENV: "env-key", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cxrscreen", "serve", "--model", str(tiny_checkpoint), "--port", "0",
               "--device", "cpu", "--threads", "1", "--threshold", f"{forced}=0"]
    server, base_url, lines = start_server(command, env)
    try:
        assert base_url.startswith("http://127.0.0.1:") and not base_url.endswith(":0")
        assert httpx.get(f"{base_url}/v1/model").status_code == 401
        headers = {"X-API-Key": "env-key"}
        card = httpx.get(f"{base_url}/v1/model", headers=headers).json()
        assert card["thresholds"] == {forced: 0.0}
        files = {"file": (covid_jpeg.name, covid_jpeg.read_bytes())}
        response = httpx.post(f"{base_url}/v1/predict", files=files, headers=headers, timeout=60)
        body = response.json()
        assert response.status_code == 200 and body["model"]["name"] == "serve-test-model"
        assert body["label"] == forced
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = "".join(lines)
    assert server.returncode in (0, -15)
    assert "predict: " in output and covid_jpeg.name not in output  # the log names no file


def test_serve_flags_reach_the_predictor(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    """--device, --threads and repeated --threshold go to load_predictor under the Python API's names."""
    from cxrscreen.serve import app as app_module

    seen: dict = {}

    def fake_load(path, **options):
        seen.update(options, path=path)
        raise SystemExit(0)  # stop before serving

    monkeypatch.setattr(app_module, "load_predictor", fake_load)
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(tiny_checkpoint), "--device", "cpu", "--threads", "3",
              "--threshold", "covid=0.3", "--threshold", "viral=0.9", "--backend", "onnx"])
    assert seen == {"path": str(tiny_checkpoint), "backend": "onnx", "device": "cpu", "threads": 3,
                    "thresholds": {"covid": 0.3, "viral": 0.9}}


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--threshold", "covid"], "--threshold 'covid': expected CLASS=P"),
     (["--threshold", "martian=0.5"], "--threshold martian: not one of the model's classes"),
     (["--threads", "0"], "--threads must be at least 1")],
)
def test_bad_predictor_flags_are_one_line_errors(
    tiny_checkpoint: Path, capsys, monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str
) -> None:
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: pytest.fail("served despite a bad flag"))
    assert main(["serve", "--model", str(tiny_checkpoint), "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_serve_takes_predicts_inference_flags(tiny_checkpoint: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve declares --device, --threads, --threshold and --backend through predict's own helpers: the same
    choices, refused by argparse alike."""
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: pytest.fail("served despite a bad flag"))
    for command in ("serve", "predict"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--model", str(tiny_checkpoint), "--device", "tpu", *(["x.png"] if command == "predict" else [])])
        assert exited.value.code == 2
        assert "argument --device: invalid choice: 'tpu'" in capsys.readouterr().err


def test_port_in_use_is_a_one_line_error(tiny_checkpoint: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrscreen.serve.app import listen

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: pytest.fail("served on a port in use"))

    taken = listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny_checkpoint), "--port", str(port)]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1
