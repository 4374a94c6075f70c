"""`serve`'s /metrics parses with Prometheus' own parser and its counters move by exactly what was sent; the
drift statistic shows on /v1/model and /metrics; the DICOM node's --metrics-port helper serves the same."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cxrscreen.monitoring.audit import read_audit_log
from cxrscreen.monitoring.events import ScreeningEvent
from cxrscreen.monitoring.metrics import serve_metrics
from cxrscreen.monitoring.observers import build_monitoring
from cxrscreen.serve.app import create_app
from cxrscreen.serve.settings import ServeSettings


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def png_bytes(path: Path) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).convert("L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_counters_move_by_exactly_what_was_sent(watched_predictor, normal_files, tmp_path):
    log = tmp_path / "audit.jsonl"
    monitoring = build_monitoring(watched_predictor, audit_log=log, metrics=True)
    client = TestClient(create_app(watched_predictor, ServeSettings(), monitoring))
    before = scrape(client.get("/metrics").text)
    labels = []
    for path in normal_files[:3]:
        answer = client.post("/v1/predict", files={"file": ("patient-name.png", png_bytes(path), "image/png")})
        assert answer.status_code == 200
        labels.append(answer.json()["label"])
    assert client.post("/v1/predict", files={"file": ("a.txt", b"hello, not an image", "text/plain")}).status_code == 415
    assert client.post("/v1/predict", files={"file": ("b.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")}).status_code == 422
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = scrape(response.text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cxrscreen_images_total", door="serve", outcome="screened") == 3
    assert moved("cxrscreen_images_total", door="serve", outcome="unscreened") == 2
    for label in set(labels):
        assert moved("cxrscreen_screened_total", door="serve", label=label) == labels.count(label)
    assert moved("cxrscreen_requests_total", door="serve", endpoint="/v1/predict", status="200") == 3
    assert moved("cxrscreen_requests_total", door="serve", endpoint="/v1/predict", status="415") == 1
    assert moved("cxrscreen_errors_total", door="serve", kind="415 Unsupported Media Type") == 1
    assert moved("cxrscreen_errors_total", door="serve", kind="422 Unprocessable Content") + moved(
        "cxrscreen_errors_total", door="serve", kind="422 Unprocessable Entity") == 1
    assert moved("cxrscreen_latency_seconds_count", door="serve") == 5
    info, = [s for f in text_string_to_metric_families(response.text) for s in f.samples if s.name == "cxrscreen_model_info"]
    assert info.labels["name"] == "watched-model" and info.labels["classes"] == "covid,normal,viral"
    assert info.labels["sha256"] == monitoring.model.sha256
    records = read_audit_log(log).records
    assert [r["screened"] for r in records] == [True, True, True, False, False]
    assert "patient-name" not in log.read_text()
    card = client.get("/v1/model").json()
    assert card["drift"]["images_seen"] == 3 and card["drift"]["alarm"] is False


def test_drift_alarm_shows_on_model_card_and_metrics(watched_predictor, normal_files):
    monitoring = build_monitoring(watched_predictor, metrics=True)
    client = TestClient(create_app(watched_predictor, ServeSettings(), monitoring))
    rng = np.random.default_rng(0)
    noise = [rng.random((256, 256)).astype(np.float32) for _ in range(40)]  # nothing like a chest X-ray
    for prediction in watched_predictor.predict_batch(noise):
        monitoring(ScreeningEvent("serve", "sha256:x", 0.1, prediction))
    drift = client.get("/v1/model").json()["drift"]
    assert drift["alarm"] is True and drift["images_seen"] == 40
    assert "guard flags" in drift["latest"]["moved"]
    samples = scrape(client.get("/metrics").text)
    assert value(samples, "cxrscreen_drift_alarm") == 1
    assert value(samples, "cxrscreen_drift_moved", quantity="guard flags") == 1
    assert value(samples, "cxrscreen_drift_corrected_p", quantity="guard flags") < 0.05
    page = client.get("/").text
    assert 'id="drift-alarm"' in page


def test_metrics_port_serves_the_same_registry(watched_predictor, normal_files):
    monitoring = build_monitoring(watched_predictor, metrics=True, drift=False)
    server, thread = serve_metrics(monitoring.metrics, 0)
    try:
        prediction = watched_predictor.predict(str(normal_files[0]))
        monitoring(ScreeningEvent("dicom", "1.2.3", 0.2, prediction))
        monitoring.metrics.count_request("dicom", "C-STORE", "0x0000")
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    samples = scrape(text)
    assert value(samples, "cxrscreen_images_total", door="dicom", outcome="screened") == 1
    assert value(samples, "cxrscreen_requests_total", door="dicom", endpoint="C-STORE", status="0x0000") == 1
