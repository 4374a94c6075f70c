"""End to end: ``cxrscreen adapt`` on a few dozen real ieee8023 images with a tiny 64 px parent, then the adapted
model through predict, export, report, evaluate, explain and serve (the API); and the lineage it records."""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from cxrscreen.cli import main
from cxrscreen.data.cache import load_prepared
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import load_dataset
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.metrics.classification import weighted_auroc
from cxrscreen.metrics.reference import OutputReference
from cxrscreen.models.checkpoint import load_checkpoint
from cxrscreen.serve.app import create_app

with warnings.catch_warnings():
    # Starlette asks for the httpx2 fork; the httpx installed works the same for these tests.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory, manifest_writer, ieee_rows, tiny_parent: Path) -> tuple[Path, Path, int]:
    folder = tmp_path_factory.mktemp("site")
    manifest = manifest_writer(folder / "site.csv", ieee_rows)
    out = folder / "run"
    rc = main(["adapt", "--model", str(tiny_parent), "--data", str(manifest), "--classes", "covid,other",
               "--folds", "3", "--sizes", "10", "--repeats", "2", "--epochs", "2", "--bootstrap", "50", "--train-blocks", "1",
               "--num-threads", "1", "--by", "source", "--out", str(out), "--quiet"])
    return out, manifest, rc


def test_adapt_json_has_before_after_and_the_curve_on_the_same_images(adapted, ieee_rows, capsys):
    out, _, rc = adapted
    assert rc == 0
    report = json.loads((out / "adapt.json").read_text())
    assert report["positive_class"] == "covid" and report["classes"] == ["covid", "other"]
    n = len(ieee_rows)  # the tiny parent stores no training hashes: nothing is left out
    for side in ("before", "after"):
        figures = report[side]
        assert figures["n"] == n and figures["n_positive"] == 24
        low, high = figures["auroc_ci"]
        assert 0.0 <= low <= figures["auroc"] <= high <= 1.0
    assert sum(sum(fold.values()) for fold in report["folds"]["per_fold"]) == n
    assert report["folds"]["grouped_by"] == "patient and near-duplicate group"
    # The threshold reaches the target sensitivity on the out-of-fold scores it was set on.
    assert report["threshold"]["sensitivity"] >= 0.95 and 0.0 <= report["threshold"]["value"] <= 1.0
    (entry,) = report["learning_curve"]
    assert entry["size"] == 10 and entry["repeats"] == 2 and len(entry["auroc_repeats"]) == 2
    assert entry["images_per_class"] == {"covid": 10.0, "other": 10.0}
    assert (out / "learning_curve.png").stat().st_size > 1000
    # Before and after are the AUROCs of the probabilities predictions.csv lists, image by image.
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n
    truth = np.array([row["class"] == "covid" for row in rows])
    for side in ("before", "after"):
        score = np.array([float(row[f"{side}_p_covid"]) for row in rows])
        assert weighted_auroc(score, truth, np.ones((1, n)))[0] == pytest.approx(report[side]["auroc"], abs=1e-5)


def test_adapted_checkpoint_records_its_lineage(adapted, tiny_parent: Path, ieee_rows):
    out, manifest, _ = adapted
    model, meta = load_checkpoint(out / "best.pt")
    parent_model, parent_meta = load_checkpoint(tiny_parent)
    lineage = meta.metrics["adaptation"]
    assert lineage["parent"]["sha256"] == hashlib.sha256(tiny_parent.read_bytes()).hexdigest()
    assert lineage["parent"]["name"] == parent_meta.name and lineage["data"] == [str(manifest)]
    report = json.loads((out / "adapt.json").read_text())
    assert lineage["after"] == report["after"] and lineage["before"] == report["before"]
    assert meta.classes == ["covid", "other"] and meta.preprocessing == parent_meta.preprocessing
    assert meta.thresholds == {"covid": pytest.approx(report["threshold"]["value"], abs=1e-6)}
    assert meta.temperature == pytest.approx(report["temperature"]["temperature"])
    assert meta.train_summary["images_per_split"]["site (all folds)"] == {"covid": 24, "other": 16}
    assert len(meta.train_hashes) >= len(ieee_rows) - 2 and meta.ood["n_fit"] == len(ieee_rows)
    # The drift reference: the site's out-of-fold outputs under the stored threshold.
    reference = OutputReference.from_dict(meta.reference)
    assert reference.images == len(ieee_rows) and reference.positive == "covid" and reference.has_guard
    assert sum(reference.label_counts.values()) == len(ieee_rows) and reference.thresholds == meta.thresholds
    # Fine-tuned: the tail changed, the frozen stem did not.
    state, parent_state = model.state_dict(), parent_model.state_dict()
    stem = "backbone.net._conv_stem.weight"
    assert np.array_equal(state[stem].numpy(), parent_state[stem].numpy())
    assert not np.allclose(state["backbone.net._conv_head.weight"].numpy(), parent_state["backbone.net._conv_head.weight"].numpy())


def test_adapted_model_predicts_exports_and_reports(adapted, ieee_rows, tmp_path, capsys):
    out, _, _ = adapted
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "best.pt"), "--format", "json", ieee_rows[0][0]]) == 0
    printed = capsys.readouterr().out
    (result,) = json.loads(printed)["predictions"]
    assert set(result["probabilities"]) == {"covid", "other"}
    assert main(["export", "--model", str(out / "best.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 100_000
    from cxrscreen.evaluation.report import write_report

    html = write_report(out, gradcam_per_class=0, log=lambda _m: None).read_text()
    assert "Adaptation to a site" in html and "after (out of fold)" in html
    # An adaptation has folds, not a training run's fractions or per-epoch curves: nothing reads as missing.
    assert "fractions ?" not in html and "?" not in html.split("Split rule:")[1].split("</p>")[0]
    assert "folds 3" in html and "No metrics.csv" not in html


def test_existing_adaptation_is_not_overwritten(adapted, tiny_parent, capsys):
    out, manifest, _ = adapted
    capsys.readouterr()
    rc = main(["adapt", "--model", str(tiny_parent), "--data", str(manifest), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds best.pt" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, manifest_writer, ieee_rows) -> tuple[Path, list[tuple[str, str, str]]]:
    """A manifest of 8 COVID and 8 other ieee8023 frontal images of patients the site fixture does not hold."""
    dataset = load_dataset(shared_data / "covid-chestxray-dataset", LabelSet.parse("covid,other"))
    site_patients = {patient for _, _, patient in ieee_rows}
    unseen = [r for r in dataset.records if r.patient_id not in site_patients]
    covid = [r for r in unseen if r.label == "covid"][:8]
    other = [r for r in unseen if r.label != "covid"][:8]
    rows = [(r.path, r.raw_label, r.patient_id or "") for r in covid + other]
    return manifest_writer(tmp_path_factory.mktemp("held_out") / "held_out.csv", rows), rows


def test_adapted_model_evaluates_explains_and_serves(adapted, held_out, tmp_path, capsys):
    """evaluate, explain and serve (API) on the adapted model: its classes, its probabilities, its guard."""
    out, site_manifest, _ = adapted
    model = out / "best.pt"
    manifest, rows = held_out
    predictor = load_predictor(model)  # the backend evaluate and serve use by default
    capsys.readouterr()
    # evaluate: the held-out images, scored by the adapted model (not the parent).
    assert main(["evaluate", "--model", str(model), "--data", str(manifest), "--out", str(tmp_path / "eval"),
                 "--bootstrap", "20", "--quiet"]) == 0
    (collection,) = json.loads((tmp_path / "eval" / "metrics.json").read_text())["collections"]
    assert collection["images_evaluated"] + collection["left_out_near_duplicates"] == len(rows)
    with open(tmp_path / "eval" / "predictions.csv", newline="") as fh:
        scored = list(csv.DictReader(fh))
    assert len(scored) == collection["images_evaluated"] > 0
    # evaluate scores the cached uint8 inputs (predict the float ones: this tiny, overconfident model moves by up
    # to 0.03 between the two), so the reference is the adapted network on the same cached inputs.
    paths = [row["path"] for row in scored]
    inputs = load_prepared(paths, predictor.meta.preprocessing, progress=False).images[:]
    expected = predictor.predict_prepared(inputs / 255.0).probs[:, predictor.classes.index("covid")]
    assert np.array([float(row["p_covid"]) for row in scored]) == pytest.approx(expected, abs=1e-6)
    parent = load_predictor(json.loads((out / "adapt.json").read_text())["parent"]["path"])
    assert np.abs(expected - [p.probabilities["covid"] for p in parent.predict(paths)]).max() > 0.5
    # The site's own images are now training images of the model: evaluate refuses them, in one line.
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(site_manifest), "--out", str(tmp_path / "e2"),
                 "--bootstrap", "20", "--quiet"]) == 2
    assert "no image left to evaluate" in capsys.readouterr().err
    # explain: a Grad-CAM overlay of a held-out image, for a class of the adapted model.
    image = Path(rows[0][0])
    assert main(["explain", str(image), "--model", str(model), "--out", str(tmp_path / "cams"), "--target", "other"]) == 0
    assert (tmp_path / "cams" / f"{image.stem}_gradcam.png").stat().st_size > 1000
    # serve: the API answers with the adapted model's classes and probabilities; its guard accepts a site image.
    client = TestClient(create_app(predictor))
    site_image = Path(ieee_rows_first(site_manifest))
    response = client.post("/v1/predict", files={"file": (site_image.name, site_image.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["probabilities"] == pytest.approx(predictor.predict(site_image).probabilities, abs=1e-6)
    assert set(body["probabilities"]) == {"covid", "other"} and body["in_distribution"] is True
    card = client.get("/v1/model").json()
    assert card["classes"] == ["covid", "other"] and card["thresholds"] == {"covid": pytest.approx(predictor.thresholds["covid"])}
    assert card["metrics"]["adaptation"]["parent"]["name"] == "tiny-test-model"


def ieee_rows_first(manifest: Path) -> str:
    with open(manifest, newline="") as fh:
        return next(csv.DictReader(fh))["path"]
