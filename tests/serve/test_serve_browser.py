"""End to end: the web page in headless Chromium against a live server with a real Predictor."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from cxrscreen.serve.app import create_app
from cxrscreen.serve.settings import ServeSettings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed"),
]


@pytest.fixture
def browser_page(request, predictor, serve_live):
    """A page open on a live server; ``@pytest.mark.parametrize("browser_page", [KEY], indirect=True)`` sets a key."""
    from playwright.sync_api import sync_playwright

    settings = ServeSettings(api_key=getattr(request, "param", None))
    with serve_live(create_app(predictor, settings)) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 950})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
        page.goto(base_url)
        try:
            yield page, problems
        finally:
            browser.close()


def drop_file(page, name: str, data: bytes) -> None:
    """Drop a file on the drop zone, as dragging it from the desktop does."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name));
            return transfer;
        }""",
        [name, base64.b64encode(data).decode()],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def test_upload_predict_and_toggle_heatmap(
    browser_page, predictor, covid_jpeg: Path, dicom_of, png_of, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page, problems = browser_page
    expect(page.locator("#model-info")).to_contain_text("serve-test-model")
    expect(page.locator(".notice")).to_contain_text("not a diagnosis")
    expect(page.locator("#api-key-row")).to_be_hidden()

    page.set_input_files("#file-input", str(covid_jpeg))
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#predicted-class")).to_have_text(predictor.predict(covid_jpeg).label)
    bars = page.locator("#probabilities li")
    expect(bars).to_have_count(len(predictor.classes))
    names = page.locator("#probabilities .bar-name").all_inner_texts()
    assert names == predictor.classes
    widths = page.eval_on_selector_all(".bar-fill", "els => els.map(e => e.getBoundingClientRect().width)")
    track = page.eval_on_selector(".bar-track", "e => e.getBoundingClientRect().width")
    assert sum(widths) == pytest.approx(track, rel=0.03)  # the bars are the probabilities, summing to 1

    image = page.locator("#xray")
    plain_src = image.get_attribute("src")
    assert plain_src.startswith("data:image/png;base64,")
    assert image.evaluate("img => img.naturalWidth") == 224
    page.check("#heatmap-toggle")
    assert image.get_attribute("src") not in (plain_src, None)
    assert "heatmap" in image.get_attribute("alt")
    expect(page.locator("#heatmap-note")).to_contain_text("evidence")
    screenshot = tmp_path / "serve-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("CXRSCREEN_SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(os.environ["CXRSCREEN_SCREENSHOT_DIR"]) / "serve-page.png"), full_page=True)
    page.uncheck("#heatmap-toggle")
    assert image.get_attribute("src") == plain_src

    page.set_input_files(
        "#file-input", files=[{"name": "chest.dcm", "mimeType": "application/dicom", "buffer": dicom_of(covid_jpeg)}]
    )
    expect(page.locator("#caption")).to_contain_text("chest.dcm (DICOM)", timeout=30_000)
    expect(page.locator("#result")).to_be_visible()
    assert image.evaluate("img => img.naturalWidth") == 224

    drop_file(page, "dropped.png", png_of(covid_jpeg))
    expect(page.locator("#caption")).to_contain_text("dropped.png (PNG)", timeout=30_000)

    page.set_input_files("#file-input", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"hello"}])
    expect(page.locator("#error")).to_contain_text("notes.png: not a PNG, JPEG or DICOM file", timeout=30_000)
    expect(page.locator("#result")).to_be_hidden()
    # The 415 answer is expected; anything else going wrong in the page is not.
    assert problems == [f"415 {page.url}v1/predict?explain=true&image=true"]


@pytest.mark.parametrize("browser_page", ["page-key"], indirect=True)
def test_page_asks_for_the_api_key(browser_page) -> None:
    from playwright.sync_api import expect

    page, problems = browser_page
    expect(page.locator("#api-key-row")).to_be_visible()
    expect(page.locator("#model-info")).to_contain_text("API key")
    page.fill("#api-key", "page-key")
    page.click("#api-key-save")
    expect(page.locator("#model-info")).to_contain_text("serve-test-model")
    assert [p.split(" ")[0] for p in problems] == ["401"]
