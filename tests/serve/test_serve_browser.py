"""End to end: the web page in headless Chromium against a live server with a real Predictor."""

from __future__ import annotations

import base64
import os
import sys
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

pytestmark = pytest.mark.slow


def require_chromium() -> None:
    """In CI (``$CI`` set) a missing browser fails the test: a skip there would hide the page's only test."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is not installed (scripts/setup.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; in CI the browser test must run")
    pytest.skip(message)


@pytest.fixture
def browser_page(request, predictor, serve_live):
    """A page open on a live server. ``@pytest.mark.parametrize("browser_page", [{...}], indirect=True)`` sets
    ``api_key`` and/or ``served``: the fixture whose predictor to serve (default ``predictor``)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    options = getattr(request, "param", {})
    served = request.getfixturevalue(options["served"]) if "served" in options else predictor
    settings = ServeSettings(api_key=options.get("api_key"))
    with serve_live(create_app(served, settings)) as base_url, sync_playwright() as playwright:
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
    expect(page.locator("#verdict-lead")).to_have_text("Most likely:")  # no threshold: the most probable class
    expect(page.locator("#decision-note")).to_be_hidden()
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


@pytest.mark.parametrize("browser_page", [{"api_key": "page-key"}], indirect=True)
def test_page_asks_for_the_api_key(browser_page) -> None:
    from playwright.sync_api import expect

    page, problems = browser_page
    expect(page.locator("#api-key-row")).to_be_visible()
    expect(page.locator("#model-info")).to_contain_text("API key")
    page.fill("#api-key", "page-key")
    page.click("#api-key-save")
    expect(page.locator("#model-info")).to_contain_text("serve-test-model")
    assert [p.split(" ")[0] for p in problems] == ["401"]


@pytest.mark.parametrize("browser_page", [{"served": "guarded_predictor"}], indirect=True)
def test_page_flags_an_image_that_is_not_a_chest_xray(
    browser_page, guarded_predictor, photo_png: bytes, radiography_root: Path
) -> None:
    from playwright.sync_api import expect

    from cxrscreen.inference.predictor import OUT_OF_DISTRIBUTION_LABEL

    page, problems = browser_page
    page.set_input_files("#file-input", files=[{"name": "holiday.png", "mimeType": "image/png", "buffer": photo_png}])
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#predicted-class")).to_have_text(OUT_OF_DISTRIBUTION_LABEL)
    expect(page.locator("#ood-warning")).to_be_visible()
    expect(page.locator("#known-limits")).to_be_visible()
    expect(page.locator("#known-limits-list li")).to_have_text(guarded_predictor.known_limits)

    # A real X-ray the guard accepts (the guard was fitted on the first 40 normals) clears the warning again.
    normals = sorted((radiography_root / "Normal" / "images").glob("*.jpg"))[40:60]
    accepted = next(path for path in normals if guarded_predictor.predict(path).in_distribution)
    page.set_input_files("#file-input", str(accepted))
    expect(page.locator("#caption")).to_contain_text(accepted.name, timeout=30_000)
    expect(page.locator("#ood-warning")).to_be_hidden()
    expect(page.locator("#predicted-class")).not_to_have_text(OUT_OF_DISTRIBUTION_LABEL)
    assert problems == []


def stored_threshold_predictor(tmp_path: Path, checkpoint_factory, thresholds: dict[str, float]):
    """The served model (same weights) with ``thresholds`` stored in its checkpoint, as `train` stores them."""
    from cxrscreen.inference.predictor import load_predictor

    path = checkpoint_factory(tmp_path / "threshold.pt", head_scale=1.0, name="serve-test-model", thresholds=thresholds)
    return load_predictor(path, device="cpu", threads=1)


@pytest.fixture
def overruling_predictor(tmp_path: Path, checkpoint_factory, predictor, covid_jpeg: Path):
    """A stored threshold that names, for ``covid_jpeg``, its second most probable class: the label is not the
    class with the longest bar."""
    probabilities = predictor.predict(covid_jpeg).probabilities
    second = sorted(probabilities, key=probabilities.__getitem__)[-2]
    return stored_threshold_predictor(tmp_path, checkpoint_factory, {second: round(probabilities[second] - 0.0005, 4)})


@pytest.fixture
def unreached_predictor(tmp_path: Path, checkpoint_factory, predictor, covid_jpeg: Path):
    """A stored threshold the most probable class of ``covid_jpeg`` does not reach: the next class is named."""
    top = predictor.predict(covid_jpeg).top_class
    return stored_threshold_predictor(tmp_path, checkpoint_factory, {top: 0.99})


@pytest.mark.parametrize("browser_page", [{"served": "overruling_predictor"}], indirect=True)
def test_page_names_the_threshold_that_overruled_the_most_probable_class(
    browser_page, overruling_predictor, covid_jpeg: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page, problems = browser_page
    expected = overruling_predictor.predict(covid_jpeg)
    decision = expected.decision
    assert decision.rule == "threshold" and decision.overrules_most_probable  # the case the page must not hide
    page.set_input_files("#file-input", str(covid_jpeg))
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#predicted-class")).to_have_text(decision.label)
    expect(page.locator(".verdict")).not_to_contain_text("Most likely")  # the label is not the most probable class
    expect(page.locator("#verdict-lead")).to_have_text("Screening label:")
    note = page.locator("#decision-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text(f"reaches {decision.cutoff * 100:.1f}%")
    expect(note).to_contain_text(f"The most probable class is {decision.most_probable}")
    expect(page.locator("#probabilities li.top .bar-name")).to_have_text(decision.most_probable)
    if os.environ.get("CXRSCREEN_SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(os.environ["CXRSCREEN_SCREENSHOT_DIR"]) / "serve-threshold.png"), full_page=True)
    assert problems == []


@pytest.mark.parametrize("browser_page", [{"served": "unreached_predictor"}], indirect=True)
def test_page_says_when_the_most_probable_class_stayed_below_its_threshold(
    browser_page, unreached_predictor, covid_jpeg: Path
) -> None:
    from playwright.sync_api import expect

    page, problems = browser_page
    decision = unreached_predictor.predict(covid_jpeg).decision
    assert decision.rule == "below_threshold" and decision.overrules_most_probable
    page.set_input_files("#file-input", str(covid_jpeg))
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#verdict-lead")).to_have_text("Screening label:")
    expect(page.locator("#predicted-class")).to_have_text(decision.label)
    expect(page.locator("#decision-note")).to_contain_text(
        f"No class reached its decision threshold ({decision.most_probable} below 99.0%)")
    expect(page.locator("#decision-note")).to_contain_text(f"The most probable class is {decision.most_probable}")
    assert problems == []


def outcome_of(check) -> BaseException | None:
    """What ``check()`` raised (pytest's skip and fail outcomes included), so a skip cannot pass for a failure."""
    try:
        check()
    except BaseException as exc:  # noqa: BLE001 - pytest's outcomes are BaseExceptions
        return exc
    return None


def test_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    in_ci = outcome_of(require_chromium)
    assert isinstance(in_ci, pytest.fail.Exception) and "in CI the browser test must run" in str(in_ci)
    monkeypatch.delenv("CI")
    elsewhere = outcome_of(require_chromium)
    assert isinstance(elsewhere, pytest.skip.Exception) and "not installed" in str(elsewhere)
