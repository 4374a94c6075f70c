"""The web page shows the server's drift alarm, in a real browser (headless Chromium), and none without one."""

from __future__ import annotations

import numpy as np
import pytest

from cxrscreen.monitoring.events import ScreeningEvent
from cxrscreen.monitoring.observers import build_monitoring
from cxrscreen.serve.app import create_app
from cxrscreen.serve.settings import ServeSettings
from serve.conftest import live_server
from serve.test_serve_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.slow


def page_text_of_alarm(app) -> tuple[bool, str]:
    """(whether #drift-alarm is visible, its text) once the page has loaded the model card."""
    from playwright.sync_api import sync_playwright

    with live_server(app) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(base_url)
            page.wait_for_function("!document.getElementById('model-info').textContent.startsWith('Loading')")
            alarm = page.locator("#drift-alarm")
            return alarm.is_visible(), alarm.text_content() or ""
        finally:
            browser.close()


@pytest.mark.parametrize("shifted", [False, True], ids=["no-drift", "drift"])
def test_page_shows_the_drift_alarm_only_when_one_stands(shifted, watched_predictor, normal_files):
    require_chromium()
    monitoring = build_monitoring(watched_predictor, metrics=True)
    rng = np.random.default_rng(0)
    images = ([rng.random((256, 256)).astype(np.float32) for _ in range(40)] if shifted  # nothing like an X-ray
              else [str(path) for path in normal_files[:3]])
    for prediction in watched_predictor.predict_batch(images):
        monitoring(ScreeningEvent("serve", "sha256:x", 0.1, prediction))
    visible, text = page_text_of_alarm(create_app(watched_predictor, ServeSettings(), monitoring))
    assert visible is shifted
    if shifted:
        assert "Drift alarm" in text and "guard flags" in text
