"""Leave-one-collection-out on a small tree of three real collections (symlinks), 1 epoch at 64 px.

Radiography DB (COVID + Normal), ieee8023 (COVID + other findings) and the TB database (tuberculosis only): the
first two give a COVID-vs-rest AUROC when left out, the TB fold cannot and must say so.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from cxrscreen.cli import main
from subsets import link_subset

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSCREEN_CACHE", str(tmp_path_factory.getbasetemp() / "cxrscreen-cache"))


@pytest.fixture(scope="module")
def three_collections(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> list[Path]:
    root = tmp_path_factory.mktemp("sources")
    radiography = link_subset(shared_data / "COVID-19_Radiography_Dataset", root / "COVID-19_Radiography_Dataset", 10,
                              pattern="[CN]*/images/*.jpg")
    tb = link_subset(shared_data / "TB_Chest_Radiography_Database", root / "TB_Chest_Radiography_Database", 8,
                     pattern="Tuberculosis/*.jpg")
    src = shared_data / "covid-chestxray-dataset"
    ieee = root / "covid-chestxray-dataset"
    (ieee / "images").mkdir(parents=True)
    with open(src / "metadata.csv", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    frontal = [r for r in rows if r["view"] in ("PA", "AP") and (src / "images" / r["filename"]).is_file()]
    chosen = [r for r in frontal if r["finding"] == "COVID-19"][:10] + [r for r in frontal if r["finding"] != "COVID-19"][:10]
    with open(ieee / "metadata.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    for row in chosen:
        if not (ieee / "images" / row["filename"]).exists():
            (ieee / "images" / row["filename"]).symlink_to(src / "images" / row["filename"])
    return [radiography, ieee, tb]


def paths_in(csv_path: Path) -> set[str]:
    with open(csv_path, encoding="utf-8", newline="") as fh:
        return {row["path"] for row in csv.DictReader(fh)}


def test_leave_one_collection_out(three_collections: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "cv"
    argv = ["crossval", "--leave-out", "collection", "--classes", "covid,other", "--epochs", "1", "--img-size", "64",
            "--batch-size", "16", "--num-threads", "1", "--bootstrap", "50", "--out", str(out), "--quiet"]
    for path in three_collections:
        argv += ["--data", str(path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "crossval.json").read_text())
    folds = {fold["source"]: fold for fold in report["folds"]}
    assert set(folds) == {"radiography_db", "ieee8023", "tb_db"}
    total = folds["tb_db"]["train_images"] + len(paths_in(out / "tb_db" / "test.csv"))
    for name, fold in folds.items():
        assert fold["error"] is None, fold["error"]
        test_paths = paths_in(out / name / "test.csv")
        assert fold["train_images"] + len(test_paths) == total
        trained_on = paths_in(out / name / "run" / "split.csv")
        assert not trained_on & test_paths  # the left-out collection never reaches training
        assert (out / name / "run" / "eval" / "metrics.json").is_file()
    for name in ("radiography_db", "ieee8023"):
        # The fold's AUROC is scikit-learn's on the predictions its evaluation saved for the left-out source.
        with open(out / name / "run" / "eval" / "predictions.csv", encoding="utf-8", newline="") as fh:
            predictions = list(csv.DictReader(fh))
        is_covid = [row["covid"] == "1" for row in predictions]
        covid_view = folds[name]["covid_vs_rest"]
        assert (covid_view["n_images"], covid_view["n_positive"]) == (len(predictions), sum(is_covid))
        assert 0 < sum(is_covid) < len(predictions)
        expected = roc_auc_score(is_covid, [float(row["p_covid"]) for row in predictions])
        assert covid_view["auroc"]["value"] == pytest.approx(expected, abs=1e-6)
        assert folds[name]["note"] is None
    assert folds["tb_db"]["covid_vs_rest"]["n_positive"] == 0
    assert folds["tb_db"]["covid_vs_rest"]["auroc"]["value"] is None
    assert folds["tb_db"]["note"] == "no AUROC: the source holds no COVID image"
    assert "leave-one-collection-out" in printed and "no AUROC" in printed and "tb_db" in printed


def test_one_source_is_refused(three_collections: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture):
    argv = ["crossval", "--data", str(three_collections[0]), "--classes", "covid,other", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "one source only" in capsys.readouterr().err
