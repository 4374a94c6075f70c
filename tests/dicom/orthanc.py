"""A real Orthanc PACS for tests: a JSON config on free 127.0.0.1 ports, started as a plain process, stopped by PID.

Missing Debian tools (orthanc, dcmtk, dicom3tools) skip these tests on a workstation and fail them under CI=true,
where ``scripts/setup.sh`` must have installed them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def require_tool(name: str, *fallbacks: str) -> str:
    """The path of a tool, else a skip (a failure under CI=true, where setup.sh installs it)."""
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).is_file()), None)
    if found:
        return found
    message = f"{name} is not installed (Debian packages orthanc, dcmtk, dicom3tools; scripts/setup.sh installs them)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """One Orthanc process; ``rest(method, path, body)`` speaks to its REST API."""

    def __init__(self, folder: Path, modalities: dict[str, list]):
        self.binary = require_tool("Orthanc", "/usr/sbin/Orthanc")
        self.http_port, self.dicom_port = free_port(), free_port()
        self.ae_title = "ORTHANC"
        config = {
            "Name": "cxrscreen-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomModalities": modalities, "DicomCheckCalledAet": False, "UnknownSopClassAccepted": True,
            "Plugins": [], "ConcurrentJobs": 1, "StableAge": 1,
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = open(folder / "orthanc.log", "w")
        self.process = subprocess.Popen([self.binary, str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.rest("GET", "/system")
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"Orthanc did not start; see {folder / 'orthanc.log'}")
                time.sleep(0.2)

    def rest(self, method: str, path: str, body=None):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, 9)
                self.process.wait()
        self.log.close()
