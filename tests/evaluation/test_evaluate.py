"""`cxrscreen evaluate` end to end on real X-rays with a small checkpoint (64 px, random head)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrscreen.cli import main
from cxrscreen.data.dedup import hash_files
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import load_dataset
from cxrscreen.data.splits import make_split, save_split
from cxrscreen.evaluation.evaluate import evaluate_model

CLASSES = ["covid", "normal", "viral"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def hash_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSCREEN_CACHE", str(tmp_path_factory.getbasetemp() / "cxrscreen-cache"))


@pytest.fixture(scope="module")
def small_ieee(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """ieee8023 layout with 10 COVID-19 and 10 other frontal rows (images symlinked to the real files)."""
    src = shared_data / "covid-chestxray-dataset"
    dst = tmp_path_factory.mktemp("ieee") / "covid-chestxray-dataset"
    (dst / "images").mkdir(parents=True)
    with open(src / "metadata.csv", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    frontal = [r for r in rows if r["view"] in ("PA", "AP") and (src / "images" / r["filename"]).is_file()]
    covid = [r for r in frontal if r["finding"] == "COVID-19"][:10]
    other = [r for r in frontal if r["finding"] != "COVID-19"][:10]
    with open(dst / "metadata.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(covid + other)
    for row in covid + other:
        target = dst / "images" / row["filename"]
        if not target.exists():
            target.symlink_to(src / "images" / row["filename"])
    return dst


def reencoded_copy(src: Path, dst: Path) -> Path:
    """``src`` at 70% of its size, saved as JPEG quality 75."""
    with Image.open(src) as image:
        image.convert("L").resize((int(image.width * 0.7), int(image.height * 0.7)), Image.BILINEAR).save(dst, "JPEG", quality=75)
    return dst


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, small_radiography: Path, small_ieee: Path, checkpoint_factory) -> Path:
    """A run directory as training leaves it: best.pt (trained on ``small_radiography``) and split.csv.

    Its ``train_hashes`` are those of resized, re-encoded copies of three ieee8023 images (as collections copy each
    other's pictures), so evaluating ieee8023 must leave out exactly those three.
    """
    run = tmp_path_factory.mktemp("run")
    dataset = load_dataset([str(small_radiography)], LabelSet(tuple(CLASSES)))
    hashes = hash_files(dataset.paths).hashes
    save_split(make_split(dataset, hashes, seed=0), run / "split.csv")
    copies = run / "copies"
    copies.mkdir()
    ieee_copies = [reencoded_copy(p, copies / p.name) for p in sorted((small_ieee / "images").glob("*.jpg"))[:3]]
    checkpoint_factory(run / "best.pt", name="tiny-eval-model", temperature=1.7,
                       train_hashes=list(hash_files(ieee_copies).hashes.values()),
                       config={"data": [str(small_radiography)], "frontal_only": True})
    return run


def split_rows(run: Path, side: str) -> list[dict[str, str]]:
    with open(run / "split.csv", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row["split"] == side]


def assert_interval(entry: dict) -> None:
    assert 0.0 <= entry["value"] <= 1.0
    if entry["ci_low"] is not None:
        assert entry["ci_low"] <= entry["value"] + 1e-9 <= entry["ci_high"] + 2e-9


def test_internal_test_split_from_run_directory(run_dir: Path, capsys: pytest.CaptureFixture):
    assert main(["evaluate", "--model", str(run_dir), "--bootstrap", "100", "--quiet"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    internal = metrics["collections"][0]
    test_rows = split_rows(run_dir, "test")
    assert internal["kind"] == "internal"
    assert internal["images_evaluated"] == len(test_rows)
    assert internal["left_out_near_duplicates"] is None
    multiclass = internal["multiclass"]
    assert sum(map(sum, multiclass["confusion_matrix"])) == len(test_rows)
    assert multiclass["support"] == {c: sum(r["class"] == c for r in test_rows) for c in CLASSES}
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert_interval(multiclass[key])
    assert_interval(internal["covid_vs_rest"]["auroc"])
    calibration = internal["calibration"]
    assert calibration["temperature"] == pytest.approx(1.7)
    assert 0.0 <= calibration["ece_t1"] <= 1.0 and 0.0 <= calibration["brier_scaled"] <= 2.0
    for name in ("confusion_matrix.png", "roc.png", "reliability.png"):
        assert (run_dir / "eval" / name).read_bytes()[:8] == PNG_MAGIC
    with open(run_dir / "eval" / "predictions.csv", encoding="utf-8") as fh:
        predictions = list(csv.DictReader(fh))
    assert {row["path"] for row in predictions} == {row["path"] for row in test_rows}
    assert all(abs(sum(float(row[f"p_{c}"]) for c in CLASSES) - 1.0) < 1e-4 for row in predictions)
    assert "internal test split" in printed and "COVID-vs-rest" in printed and "ECE" in printed


def test_external_collection_leaves_out_training_near_duplicates(run_dir: Path, small_ieee: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture):
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(run_dir), "--external", str(small_ieee), "--by", "source",
            "--out", str(out), "--bootstrap", "100", "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    internal, external = metrics["collections"]
    assert external["kind"] == "external"
    assert external["images_listed"] == 20
    assert external["left_out_near_duplicates"] == 3
    assert external["images_evaluated"] == 17
    assert f"left out {external['left_out_near_duplicates']} near-duplicate" in captured.out
    # ieee8023 findings without a 3-class model class (e.g. bacterial) still count in COVID-vs-rest
    covid_view = external["covid_vs_rest"]
    assert covid_view["n_images"] == external["images_evaluated"]
    without_class = external["without_model_class"]
    assert set(without_class) <= {"other_pneumonia"}  # the subset's ARDS row
    assert covid_view["n_images"] - external["multiclass"]["n_images"] == sum(without_class.values())
    assert 0 < covid_view["n_positive"] < covid_view["n_images"]
    assert_interval(covid_view["auroc"])
    sources = {s["source"] for s in external["by_source"]}
    assert sources and all(s.startswith("ieee8023") for s in sources)
    comparison = metrics["comparison"]
    assert [row["name"] for row in comparison] == [internal["name"], external["name"]]
    drop = comparison[1]["auroc_drop"]
    assert drop["value"] == pytest.approx(comparison[0]["auroc"]["value"] - comparison[1]["auroc"]["value"], abs=1e-5)
    assert (out / "covid-chestxray-dataset" / "roc.png").read_bytes()[:8] == PNG_MAGIC
    assert "AUROC drop" in captured.out


def test_merged_classes_sum_the_model_probabilities(run_dir: Path, small_radiography: Path, tmp_path: Path):
    model = str(run_dir / "best.pt")
    three = evaluate_model(model=model, data=[str(small_radiography)], split="all", n_resamples=0, progress=False)
    two = evaluate_model(model=model, data=[str(small_radiography)], split="all", classes="covid,other",
                         n_resamples=0, progress=False, out=str(tmp_path))
    assert two.classes == ["covid", "other"] and three.primary.n_evaluated == 36
    assert three.primary.paths == two.primary.paths
    np.testing.assert_allclose(two.primary.probs[:, 1], three.primary.probs[:, 1:].sum(axis=1), atol=1e-6)
    assert (two.primary.targets == (three.primary.targets > 0)).all()
    assert "includes the images the model was trained on" in " ".join(two.primary.notes)
    json.dumps(two.to_dict())
    assert (tmp_path / "metrics.json").is_file()


def test_user_errors_are_one_line(run_dir: Path, small_radiography: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["evaluate", "--model", str(run_dir), "--classes", "covid,normal", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["evaluate", "--model", str(tmp_path / "missing.pt"), "--data", str(small_radiography)]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and err.strip().count("\n") == 0
    assert main(["evaluate", "--model", str(run_dir), "--bootstrap", "-5"]) == 2
    assert "--bootstrap" in capsys.readouterr().err


def test_label_map_maps_a_collections_own_labels(run_dir: Path, radiography_root: Path, tmp_path: Path, capsys) -> None:
    covid = sorted((radiography_root / "COVID" / "images").glob("*.jpg"))[:6]
    normal = sorted((radiography_root / "Normal" / "images").glob("*.jpg"))[:6]
    manifest = tmp_path / "site.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},positive\n" for p in covid) + "".join(f"{p},negative\n" for p in normal))
    base = ["evaluate", "--model", str(run_dir / "best.pt"), "--data", str(manifest), "--bootstrap", "0", "--quiet"]
    assert main(base) == 2  # no label the model knows
    assert "positive" in capsys.readouterr().err
    out = tmp_path / "eval"
    assert main(base + ["--label-map", "positive=covid", "--label-map", "negative=normal", "--out", str(out)]) == 0
    collection = json.loads((out / "metrics.json").read_text())["collections"][0]
    assert collection["images_evaluated"] == 12
    assert collection["covid_vs_rest"]["n_positive"] == 6
    assert collection["multiclass"]["support"] == {"covid": 6, "normal": 6, "viral": 0}
