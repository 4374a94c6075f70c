"""Inference runs off the event loop and several requests are in flight at once: a slow image delays no one else.

Every check here is about order, not time: the slow prediction is held on an Event until the test has seen the
other requests answered, so "did not wait for it" is proved by "answered while it was still blocked".
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import httpx

from cxrscreen.serve.app import ModelGate, create_app
from cxrscreen.serve.settings import ServeSettings

SLOW_NAME = "slow.jpg"
# A failure bound, not a measurement: a request that waits for the held one would wait the whole test out.
NOT_BLOCKED_TIMEOUT_S = 60


class SlowPredictor:
    """The real predictor, except that predicting a file named ``slow.jpg`` waits until the test releases it."""

    def __init__(self, inner):
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict(self, source, name=None):
        if name == SLOW_NAME:
            self.entered.set()
            if not self.release.wait(timeout=120):
                raise TimeoutError("the test never released the slow prediction")
        return self.inner.predict(source, name=name)


def test_a_slow_prediction_delays_neither_healthz_nor_another_prediction(
    predictor, covid_jpeg: Path, serve_live
) -> None:
    slow = SlowPredictor(predictor)
    slow_responses: list[httpx.Response] = []
    with serve_live(create_app(slow, ServeSettings())) as base_url:  # the default number of workers

        def post_slow() -> None:
            files = {"file": (SLOW_NAME, covid_jpeg.read_bytes())}
            slow_responses.append(httpx.post(f"{base_url}/v1/predict", files=files, timeout=180))

        client = threading.Thread(target=post_slow)
        client.start()
        try:
            assert slow.entered.wait(timeout=60), "the slow request never reached the predictor"
            health = httpx.get(f"{base_url}/healthz", timeout=NOT_BLOCKED_TIMEOUT_S)
            card = httpx.get(f"{base_url}/v1/model", timeout=NOT_BLOCKED_TIMEOUT_S)
            files = {"file": (covid_jpeg.name, covid_jpeg.read_bytes())}
            normal = httpx.post(f"{base_url}/v1/predict", files=files, timeout=NOT_BLOCKED_TIMEOUT_S)
            assert health.json() == {"status": "ok"} and card.status_code == 200
            assert normal.status_code == 200 and normal.json()["label"] == predictor.predict(covid_jpeg).label
            assert not slow.release.is_set() and client.is_alive() and not slow_responses  # still held
        finally:
            slow.release.set()
            client.join(timeout=120)
    assert slow_responses[0].status_code == 200
    assert slow_responses[0].json()["label"] in predictor.classes


def wait_until(gate: ModelGate, condition: Callable[[], bool], what: str) -> None:
    """Block until ``condition`` holds, woken by the gate's own notifications (not by guessing a delay)."""
    with gate._condition:
        assert gate._condition.wait_for(condition, timeout=30), f"timed out waiting until {what}"


def test_gate_runs_an_explanation_alone() -> None:
    gate = ModelGate()
    events: list[str] = []
    first_in = threading.Event()
    prediction_may_finish = threading.Event()

    def prediction(tag: str, hold: threading.Event | None) -> None:
        with gate.shared():
            events.append(f"{tag} start")
            if hold is not None:
                first_in.set()
                hold.wait(timeout=30)
            events.append(f"{tag} end")

    def explanation() -> None:
        with gate.exclusive():
            events.append("explain start")
            events.append("explain end")

    first = threading.Thread(target=prediction, args=("p1", prediction_may_finish))
    first.start()
    assert first_in.wait(timeout=30)
    explain = threading.Thread(target=explanation)
    explain.start()
    wait_until(gate, lambda: gate.waiting == 1 and gate._exclusive, "the explanation waits for p1")
    late = threading.Thread(target=prediction, args=("p2", None))
    late.start()
    wait_until(gate, lambda: gate.waiting == 2, "p2 waits too")
    assert events == ["p1 start"]  # the explanation waits for p1; p2, arriving later, waits behind the explanation
    prediction_may_finish.set()
    for thread in (first, explain, late):
        thread.join(timeout=30)
    assert events == ["p1 start", "p1 end", "explain start", "explain end", "p2 start", "p2 end"]

