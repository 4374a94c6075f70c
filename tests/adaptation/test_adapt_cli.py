"""End to end: ``cxrscreen adapt`` on a few dozen real ieee8023 images with a tiny 64 px parent, then the adapted
model through predict, export and report; and the lineage it records."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cxrscreen.cli import main
from cxrscreen.metrics.classification import weighted_auroc
from cxrscreen.models.checkpoint import load_checkpoint


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


def test_existing_adaptation_is_not_overwritten(adapted, tiny_parent, capsys):
    out, manifest, _ = adapted
    capsys.readouterr()
    rc = main(["adapt", "--model", str(tiny_parent), "--data", str(manifest), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds best.pt" in err and len(err.strip().splitlines()) == 1
