"""Inference runs off the event loop: the service stays responsive while a prediction is slow."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from cxrscreen.serve.app import ModelGate, create_app
from cxrscreen.serve.settings import ServeSettings


class SlowPredictor:
    """The real predictor, except that ``predict`` waits until the test releases it."""

    def __init__(self, inner):
        self.inner = inner
        self.meta = inner.meta
        self.classes = inner.classes
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, source, name=None):
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the prediction")
        return self.inner.predict(source, name=name)

    def explain(self, source, target=None, name=None):
        return self.inner.explain(source, target=target, name=name)


def test_healthz_and_model_answer_while_a_prediction_runs(predictor, covid_jpeg: Path, serve_live) -> None:
    slow = SlowPredictor(predictor)
    responses: list[httpx.Response] = []
    with serve_live(create_app(slow, ServeSettings(workers=1))) as base_url:

        def post() -> None:
            files = {"file": (covid_jpeg.name, covid_jpeg.read_bytes())}
            responses.append(httpx.post(f"{base_url}/v1/predict", files=files, timeout=60))

        client = threading.Thread(target=post)
        client.start()
        try:
            assert slow.entered.wait(timeout=30)
            started = time.monotonic()
            health = httpx.get(f"{base_url}/healthz", timeout=5)
            card = httpx.get(f"{base_url}/v1/model", timeout=5)
            elapsed = time.monotonic() - started
            assert health.json() == {"status": "ok"} and card.status_code == 200
            assert elapsed < 2.0
            assert client.is_alive() and not responses  # the prediction is still waiting
        finally:
            slow.release.set()
            client.join(timeout=60)
    assert responses[0].status_code == 200
    assert responses[0].json()["label"] in predictor.classes


def test_gate_runs_an_explanation_alone() -> None:
    gate = ModelGate()
    events: list[str] = []
    prediction_may_finish = threading.Event()

    def prediction(tag: str, hold: threading.Event | None) -> None:
        with gate.shared():
            events.append(f"{tag} start")
            if hold is not None:
                hold.wait(timeout=10)
            events.append(f"{tag} end")

    def explanation() -> None:
        with gate.exclusive():
            events.append("explain start")
            time.sleep(0.1)
            events.append("explain end")

    first = threading.Thread(target=prediction, args=("p1", prediction_may_finish))
    first.start()
    while "p1 start" not in events:
        time.sleep(0.005)
    explain = threading.Thread(target=explanation)
    explain.start()
    time.sleep(0.1)
    late = threading.Thread(target=prediction, args=("p2", None))
    late.start()
    time.sleep(0.1)
    assert events == ["p1 start"]  # the explanation waits for p1; p2 waits behind the explanation
    prediction_may_finish.set()
    for thread in (first, explain, late):
        thread.join(timeout=10)
    assert events == ["p1 start", "p1 end", "explain start", "explain end", "p2 start", "p2 end"]
