"""`cxrscreen evaluate` end to end on real X-rays with a small checkpoint (64 px, random head)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import warnings
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from cxrscreen.cli import main
from cxrscreen.data.dedup import hash_files
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import load_dataset, scan_paths
from cxrscreen.data.splits import make_split, save_split
from cxrscreen.evaluation.evaluate import evaluate_model
from cxrscreen.metrics.classification import bootstrap_weights

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
    # head_scale 3: probabilities away from 0 and 1, so a saved ranking is not a tie of rounded values.
    checkpoint_factory(run / "best.pt", name="tiny-eval-model", temperature=1.7, head_scale=3.0,
                       train_hashes=list(hash_files(ieee_copies).hashes.values()),
                       config={"data": [str(small_radiography)], "frontal_only": True})
    return run


def split_rows(run: Path, side: str) -> list[dict[str, str]]:
    with open(run / "split.csv", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row["split"] == side]


def read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def group_keys(data: Path) -> dict[str, str]:
    """path -> the group (patient, or the image itself) the evaluation's bootstrap draws, for every image of ``data``."""
    return {r.path: r.group_key for r in scan_paths([data])[0].records}


def sklearn_or_nan(metric: Callable[..., float], *columns: np.ndarray) -> float:
    """``metric`` on ``columns``; NaN where it is undefined (AUROC of a resample holding one class only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. balanced accuracy of a resample lacking a predicted class
        try:
            return float(metric(*columns))
        except ValueError:
            return float("nan")


def bootstrap_reference(metric: Callable[..., float], columns: tuple[np.ndarray, ...], groups: list[str],
                        n_resamples: int) -> tuple[float, float, float]:
    """(value, 95% low, 95% high) of a scikit-learn ``metric`` on ``columns`` and on the evaluation's resamples
    (seed 0, whole groups drawn), each resample expanded into repeated rows so scikit-learn sees it as a data set."""
    weights = bootstrap_weights(len(groups), n_resamples, 0, groups).astype(int)
    values = np.array([sklearn_or_nan(metric, *(c[np.repeat(np.arange(len(groups)), row)] for c in columns))
                       for row in weights])
    resampled = values[1:][np.isfinite(values[1:])]
    low, high = np.percentile(resampled, [2.5, 97.5])
    return float(values[0]), float(low), float(high)


def assert_interval(entry: dict, reference: tuple[float, float, float]) -> None:
    """A metric.json interval is the scikit-learn reference (to its 6 saved decimals), a real interval around it."""
    value, low, high = reference
    assert entry["value"] == pytest.approx(value, abs=1e-6)
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((low, high), abs=1e-6)
    assert entry["ci_low"] <= entry["value"] <= entry["ci_high"] and entry["ci_low"] < entry["ci_high"]


def multiclass_references(rows: list[dict[str, str]], classes: list[str], groups: dict[str, str],
                          n_resamples: int) -> dict[str, tuple[float, float, float]]:
    """accuracy, balanced_accuracy and macro_f1 of predictions.csv's argmax over its rows with a class."""
    rows = [row for row in rows if row["class"]]
    truth = np.array([classes.index(row["class"]) for row in rows])
    predicted = np.array([max(range(len(classes)), key=lambda i: float(row[f"p_{classes[i]}"])) for row in rows])
    keys = [groups[row["path"]] for row in rows]
    metrics = {"accuracy": accuracy_score, "balanced_accuracy": balanced_accuracy_score,
               "macro_f1": lambda t, p: f1_score(t, p, average="macro", zero_division=0)}
    return {name: bootstrap_reference(metric, (truth, predicted), keys, n_resamples) for name, metric in metrics.items()}


def covid_auroc_reference(rows: list[dict[str, str]], groups: dict[str, str], n_resamples: int) -> tuple[float, float, float]:
    truth = np.array([row["covid"] == "1" for row in rows])
    score = np.array([float(row["p_covid"]) for row in rows])
    return bootstrap_reference(roc_auc_score, (truth, score), [groups[row["path"]] for row in rows], n_resamples)


def reference_ece(probs: np.ndarray, truth: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error written out bin by bin: bins (k/15, (k+1)/15] of the top probability."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == truth
    total = 0.0
    for k in range(n_bins):
        inside = (confidence > k / n_bins) & (confidence <= (k + 1) / n_bins)
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return total / len(truth)


def test_internal_test_split_from_run_directory(run_dir: Path, small_radiography: Path, capsys: pytest.CaptureFixture):
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
    predictions = read_predictions(run_dir / "eval" / "predictions.csv")
    assert {row["path"] for row in predictions} == {row["path"] for row in test_rows}
    assert all(abs(sum(float(row[f"p_{c}"]) for c in CLASSES) - 1.0) < 1e-4 for row in predictions)
    # Every interval recomputed with scikit-learn from the saved predictions, over the same 100 resamples.
    groups = group_keys(small_radiography)
    for key, reference in multiclass_references(predictions, CLASSES, groups, 100).items():
        assert_interval(multiclass[key], reference)
    assert_interval(internal["covid_vs_rest"]["auroc"], covid_auroc_reference(predictions, groups, 100))
    # ECE and Brier recomputed from the same rows: as saved (at T = 1.7) and turned back to T = 1.
    calibration = internal["calibration"]
    assert calibration["temperature"] == pytest.approx(1.7)
    probs = np.array([[float(row[f"p_{c}"]) for c in CLASSES] for row in predictions])
    truth = np.array([CLASSES.index(row["class"]) for row in predictions])
    probs_t1 = softmax(np.log(probs) * 1.7, axis=1)
    assert calibration["brier_scaled"] == pytest.approx(((probs - np.eye(3)[truth]) ** 2).sum(axis=1).mean(), abs=1e-5)
    assert calibration["brier_t1"] == pytest.approx(((probs_t1 - np.eye(3)[truth]) ** 2).sum(axis=1).mean(), abs=1e-5)
    assert calibration["ece_scaled"] == pytest.approx(reference_ece(probs, truth), abs=1e-5)
    assert calibration["ece_t1"] == pytest.approx(reference_ece(probs_t1, truth), abs=1e-5)
    assert calibration["ece_t1"] != pytest.approx(calibration["ece_scaled"], abs=1e-3)  # the temperature is applied
    for name in ("confusion_matrix.png", "roc.png", "reliability.png"):
        assert (run_dir / "eval" / name).read_bytes()[:8] == PNG_MAGIC
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
    # ieee8023 names its patients: the bootstrap draws patients, and the reference draws the same ones.
    predictions = read_predictions(out / "covid-chestxray-dataset" / "predictions.csv")
    assert len(predictions) == external["images_evaluated"]
    groups = group_keys(small_ieee)
    assert len({groups[row["path"]] for row in predictions}) < len(predictions)  # some patient has two images
    assert_interval(covid_view["auroc"], covid_auroc_reference(predictions, groups, 100))
    for key, reference in multiclass_references(predictions, CLASSES, groups, 100).items():
        assert_interval(external["multiclass"][key], reference)
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
    err = capsys.readouterr().err
    assert "positive" in err and "--label-map LABEL=CLASS" in err  # what to do about it, too
    out = tmp_path / "eval"
    assert main(base + ["--label-map", "positive=covid", "--label-map", "negative=normal", "--out", str(out)]) == 0
    collection = json.loads((out / "metrics.json").read_text())["collections"][0]
    assert collection["images_evaluated"] == 12
    assert collection["covid_vs_rest"]["n_positive"] == 6
    assert collection["multiclass"]["support"] == {"covid": 6, "normal": 6, "viral": 0}


def test_nothing_left_to_evaluate_says_how_many_were_left_out_and_why(
    run_dir: Path, small_ieee: Path, tmp_path: Path, capsys
) -> None:
    """Every image a near-duplicate of the training images (the run's re-encoded copies), two with a label the model
    has no class for: the one-line error counts both and names --label-map."""
    copies = sorted((run_dir / "copies").glob("*.jpg"))
    others = sorted((small_ieee / "images").glob("*.jpg"))[5:7]
    manifest = tmp_path / "site.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},COVID-19\n" for p in copies)
                        + "".join(f"{p},zebra\n" for p in others), encoding="utf-8")
    assert main(["evaluate", "--model", str(run_dir / "best.pt"), "--data", str(manifest), "--bootstrap", "0", "--quiet"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the one-off ONNX export's lines
    assert f"{manifest}: no image left to evaluate: 3 of the 3 image(s) are near-duplicates of the model's training images" in line
    assert "(pHash distance <= 6 of 64 bits) and were left out" in line
    assert "labels without a class: zebra 2 (--label-map LABEL=CLASS" in line
