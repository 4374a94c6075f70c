"""``cxrscreen report RUN_DIR`` on a real 1-epoch run (64 px) after `evaluate` and `audit`: one self-contained page."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cxrscreen.cli import main
from cxrscreen.evaluation.audit import audit_model
from cxrscreen.training.config import TrainConfig
from cxrscreen.training.trainer import train
from test_audit import FixedLungs

pytestmark = pytest.mark.slow
SECTIONS = ("overview", "data", "curves", "evaluation", "audit", "gradcam")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PageParts(HTMLParser):
    """Collects the ``src`` of every <img>, the ids of <section>s, the <figure> classes and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.sections: list[str] = []
        self.figures: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        elif tag == "section":
            self.sections.append(values.get("id") or "")
        elif tag == "figure":
            self.figures.append(values.get("class") or "")
        elif tag in ("link", "script") or values.get("href"):
            self.links.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory, small_radiography: Path) -> Path:
    """A finished 1-epoch run, evaluated (internal test split) and audited."""
    base = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CXRSCREEN_CACHE", str(base / "cache"))
        run = base / "run"
        train(TrainConfig(data=[str(small_radiography)], out=str(run), img_size=64, epochs=2, batch_size=8,
                          num_threads=1, device="cpu"), progress=False, log=lambda _m: None)
        assert main(["evaluate", "--model", str(run), "--bootstrap", "50", "--quiet"]) == 0
        audit_model(model=str(run), n_resamples=50, gradcam_per_class=2, lungs=FixedLungs(),
                    progress=False, log=lambda _m: None)
    return run


def test_report_is_self_contained_with_every_section(evaluated_run: Path, capsys: pytest.CaptureFixture):
    assert main(["report", str(evaluated_run), "--gradcam-per-class", "2"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (evaluated_run / "report.html").read_text(encoding="utf-8")
    parts = PageParts()
    parts.feed(page)
    assert parts.sections == list(SECTIONS)
    assert not parts.links  # nothing loaded from elsewhere
    assert len(parts.images) >= 5  # curves, confusion matrix, ROC, reliability, Grad-CAM overlays
    for src in parts.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    text = " ".join(parts.text)
    audit = json.loads((evaluated_run / "audit" / "audit.json").read_text())
    assert f"Verdict: {audit['verdict']}" in text
    assert "COVID-vs-rest AUROC" in text and "Split rule" in text and "Screening aid only" in text
    # every Grad-CAM figure is one of the test split's images, correct or wrong
    gradcam = page.split('id="gradcam"', 1)[1]
    assert gradcam.count("<figure") >= 3
    assert "No evaluation yet" not in page and "No shortcut audit yet" not in page


def test_report_names_what_is_missing(checkpoint_factory, tmp_path: Path):
    bare = tmp_path / "bare"
    bare.mkdir()
    checkpoint_factory(bare / "best.pt")  # a model that carries no test metrics
    out = tmp_path / "bare.html"
    assert main(["report", str(bare), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "No evaluation yet" in page and "No shortcut audit yet" in page and "No metrics.csv" in page


def test_report_before_evaluate_shows_the_test_split_train_measured(evaluated_run: Path, tmp_path: Path):
    """The checkpoint of a finished run carries the test metrics ``train`` measured: the report shows them (with a
    hint for external collections) rather than "No evaluation yet"."""
    from cxrscreen.evaluation.report import fmt
    from cxrscreen.models.checkpoint import read_checkpoint

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "best.pt").symlink_to(evaluated_run / "best.pt")
    out = tmp_path / "bare.html"
    assert main(["report", str(bare), "--out", str(out)]) == 0
    evaluation = out.read_text(encoding="utf-8").split('id="evaluation"', 1)[1].split("</section>", 1)[0]
    test = read_checkpoint(evaluated_run / "best.pt")["meta"]["metrics"]["test"]
    assert "No evaluation yet" not in evaluation and "cxrscreen evaluate" in evaluation
    assert fmt(test["accuracy"]) in evaluation and fmt(test["macro_f1"]) in evaluation


def test_report_refuses_a_folder_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["report", str(tmp_path)]) == 2
    assert "no best.pt" in capsys.readouterr().err
