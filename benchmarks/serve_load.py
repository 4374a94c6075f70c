"""Load test of ``cxrscreen serve``: concurrent clients posting real X-rays to /v1/predict on loopback.

    .venv/bin/python benchmarks/serve_load.py [--model FILE] [--clients 8] [--requests 200] [--workers 1]
                                              [--max-seconds 300] [--explain]

Starts ``cxrscreen serve`` in a subprocess on a free loopback port (the bundled model unless ``--model`` is
given), waits for /healthz, warms up, then runs ``--clients`` threads that each send ``--requests`` uploads
(cycling through real X-rays from ../shared/data) and prints requests/s, latency percentiles and the error
count. It stops by itself: after the last request, or at ``--max-seconds`` (requests not sent by then are
reported), and always shuts the server down.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRSCREEN_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_MODEL = REPO / "src" / "cxrscreen" / "models" / "weights" / "default.pt"
IMAGES_PER_FOLDER = 16


@dataclass
class LoadResult:
    """What the clients saw: one latency (s) per answered request, failures, and requests never sent."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    not_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def real_xrays(data_root: Path) -> list[tuple[str, bytes]]:
    """A few real X-rays of each class (224 px) and of ieee8023 (up to 512 px), as (name, bytes)."""
    folders = [
        data_root / "COVID-19_Radiography_Dataset" / name / "images" for name in ("COVID", "Normal", "Viral Pneumonia")
    ] + [data_root / "covid-chestxray-dataset" / "images"]
    files = [path for folder in folders for path in sorted(folder.glob("*.jpg"))[:IMAGES_PER_FOLDER]]
    if not files:
        raise SystemExit(f"{data_root}: no X-rays found; set CXRSCREEN_SHARED_DATA")
    return [(path.name, path.read_bytes()) for path in files]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, workers: int, log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "cxrscreen", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--model", str(model), "--workers", str(workers),
    ]
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_until_healthy(server: subprocess.Popen, base_url: str, log_path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /healthz within {timeout_s:.0f} s")


def run_client(
    url: str, images: list[tuple[str, bytes]], offset: int, count: int, deadline: float, result: LoadResult
) -> None:
    """Send ``count`` uploads one after another on one connection, starting at ``images[offset]``."""
    with httpx.Client(timeout=120) as client:
        for i in range(count):
            if time.monotonic() > deadline:
                with result.lock:
                    result.not_sent += count - i
                return
            name, data = images[(offset + i) % len(images)]
            started = time.perf_counter()
            try:
                response = client.post(url, files={"file": (name, data)})
                failure = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            elapsed = time.perf_counter() - started
            with result.lock:
                if failure is None:
                    result.latencies.append(elapsed)
                else:
                    result.errors.append(failure)


def run_load(
    url: str, images: list[tuple[str, bytes]], clients: int, requests: int, max_seconds: float
) -> tuple[LoadResult, float]:
    """``clients`` threads of :func:`run_client` at once; returns what they saw and the wall time (s)."""
    result = LoadResult()
    deadline = time.monotonic() + max_seconds
    threads = [
        threading.Thread(target=run_client, args=(url, images, c * 7, requests, deadline, result), daemon=True)
        for c in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result, time.perf_counter() - started


def report(result: LoadResult, wall_s: float, title: str) -> str:
    answered = len(result.latencies)
    ms = np.asarray(result.latencies) * 1000 if answered else np.full(1, np.nan)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    rows = [
        ("requests answered", f"{answered}"),
        ("errors", f"{len(result.errors)}" + (f" ({', '.join(sorted(set(result.errors)))})" if result.errors else "")),
        ("not sent (time limit)", f"{result.not_sent}"),
        ("wall time", f"{wall_s:.1f} s"),
        ("throughput", f"{answered / wall_s:.1f} requests/s"),
        ("latency p50", f"{p50:.0f} ms"),
        ("latency p95", f"{p95:.0f} ms"),
        ("latency p99", f"{p99:.0f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the bundled model)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--workers", type=int, default=1, help="the server's --workers")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop sending after this long")
    parser.add_argument("--explain", action="store_true", help="ask for Grad-CAM too (?explain=true)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="root of the shared real data")
    args = parser.parse_args()
    model = args.model or DEFAULT_MODEL
    if not model.is_file():
        raise SystemExit(f"{model}: model file not found; pass a checkpoint with --model")
    images = real_xrays(args.data)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    url = f"{base_url}/v1/predict" + ("?explain=true" if args.explain else "")
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        server = start_server(model, port, args.workers, log_path)
        try:
            wait_until_healthy(server, base_url, log_path)
            card = httpx.get(f"{base_url}/v1/model").json()
            run_load(url, images, clients=2, requests=4, max_seconds=60)  # warm-up, not measured
            result, wall_s = run_load(url, images, args.clients, args.requests, args.max_seconds)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    title = (
        f"cxrscreen serve load test: {args.clients} clients x {args.requests} requests, "
        f"model {card['name']} v{card['version']} ({card['arch']}, {card['input_size']} px), "
        f"server --workers {args.workers}{', explain' if args.explain else ''}, {os.cpu_count()} CPUs"
    )
    print(report(result, wall_s, title))
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
