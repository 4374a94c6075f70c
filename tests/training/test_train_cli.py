"""End-to-end training through the command line on a few dozen real X-rays (64 px, 1-2 epochs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrscreen.cli import main
from cxrscreen.metrics.reference import OutputReference
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint, save_checkpoint


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--img-size", "64", "--epochs", "1", "--batch-size", "8",
            "--out", str(out), "--quiet", "--num-threads", "2", *extra]


SHIFTS = (2, 3)  # pixels: re-sampled copies 1-5 bits per 64 from their original (measured on these images)


def shifted_copy(src: Path, dst: Path, pixels: int) -> None:
    """A near-duplicate of ``src``: shifted by ``pixels`` (cropped and resized back) and re-encoded as JPEG."""
    from PIL import Image

    image = Image.open(src).convert("L")
    width, height = image.size
    image.crop((pixels, 0, width, height)).resize((width, height), Image.BILINEAR).save(dst, quality=60)


@pytest.fixture(scope="module")
def radiography_with_duplicates(radiography_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images per class of the Radiography DB (symlinks) plus, for 2 of them per class, two near-duplicate
    copies each: the split must keep every copy on its original's side."""
    from subsets import link_subset

    root = link_subset(radiography_root, tmp_path_factory.mktemp("dups") / "COVID-19_Radiography_Dataset", 12)
    for folder in sorted(root.glob("*/images")):
        for original in sorted(folder.glob("*.jpg"))[:2]:
            for pixels in SHIFTS:
                shifted_copy(original.resolve(), folder / f"{original.stem}-shift{pixels}.jpg", pixels)
    return root


@pytest.fixture(scope="module")
def trained_run(radiography_with_duplicates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(train_args(radiography_with_duplicates, out)) == 0
    return out


def test_run_directory_holds_every_output(trained_run: Path) -> None:
    for name in ("config.json", "split.csv", "metrics.csv", "best.pt", "last.pt", "summary.json", "report.html"):
        assert (trained_run / name).is_file(), name
    assert not list(trained_run.glob(".*.tmp")), "a temporary file was left behind"
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]
    assert 0.0 <= float(rows[0]["val_accuracy"]) <= 1.0
    assert float(rows[0]["train_loss"]) > 0


def test_checkpoint_is_self_describing(trained_run: Path) -> None:
    model, meta = load_checkpoint(trained_run / "best.pt")
    assert meta.arch == "efficientnet_lite0"
    assert meta.classes == ["covid", "normal", "viral"]
    assert meta.preprocessing.img_size == 64
    assert 0.05 <= meta.temperature <= 20
    assert meta.ood, "the OOD guard was not fitted"
    assert meta.ood["features"] == "whole_image" and meta.ood["feature_dim"] == 4 * 2 * 192
    split = list(csv.DictReader((trained_run / "split.csv").open()))
    n_train = sum(1 for r in split if r["split"] == "train")
    assert len(meta.train_hashes) == n_train
    # The guard is fitted on training and validation images; its threshold comes from their out-of-fold scores.
    n_val = sum(1 for r in split if r["split"] == "val")
    assert meta.ood["n_fit"] == n_train + n_val
    assert meta.ood["calibration"]["set"] == "out-of-fold" and meta.ood["calibration"]["images"] == n_train + n_val
    # The drift reference: the validation images' outputs, their guard scores out of fold.
    reference = OutputReference.from_dict(meta.reference)
    assert reference.images == n_val and sum(reference.label_counts.values()) == n_val
    assert reference.has_guard and reference.guard_quantiles == sorted(reference.guard_quantiles)
    assert reference.flag_rate < 0.5 and reference.positive == "covid"
    assert set(meta.train_summary["images_per_split"]) == {"train", "val", "test"}
    test = meta.metrics["test"]
    assert 0.0 <= test["accuracy"]["value"] <= 1.0
    assert test["accuracy"]["ci_low"] <= test["accuracy"]["value"] <= test["accuracy"]["ci_high"]
    assert "covid_vs_rest" in test
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_too_few_validation_images_keep_temperature_one_and_say_why(trained_run: Path) -> None:
    from cxrscreen.metrics.calibration import MIN_CALIBRATION_IMAGES

    summary = json.loads((trained_run / "summary.json").read_text())
    n_val = sum(summary["data"]["images_per_split"]["val"].values())
    assert n_val < MIN_CALIBRATION_IMAGES
    _, meta = load_checkpoint(trained_run / "best.pt")
    assert meta.temperature == summary["temperature"] == 1.0
    for calibration in (summary["calibration"], meta.metrics["calibration"]):
        assert calibration["images"] == n_val and calibration["fitted"] is None
        assert f"{n_val} validation image(s) are too few" in calibration["note"]
    assert summary["calibration"]["note"] in (trained_run / "report.html").read_text(encoding="utf-8")


def test_report_written_by_train_shows_the_test_metrics_it_measured(trained_run: Path) -> None:
    from cxrscreen.evaluation.report import fmt

    page = (trained_run / "report.html").read_text(encoding="utf-8")
    evaluation = page.split('id="evaluation"', 1)[1].split("</section>", 1)[0]
    test = json.loads((trained_run / "summary.json").read_text())["test"]
    assert "No evaluation yet" not in evaluation
    for key in ("accuracy", "macro_f1", "macro_auroc"):
        assert fmt(test[key]) in evaluation, key
    assert fmt(test["covid_vs_rest"]["auroc"]) in evaluation
    assert f"{test['n_images']} images evaluated" in evaluation


def test_refit_guard_reproduces_the_trained_guard(trained_run: Path, tmp_path: Path, capsys) -> None:
    import numpy as np

    copy = tmp_path / "copy.pt"
    copy.write_bytes((trained_run / "best.pt").read_bytes())
    model, meta = load_checkpoint(copy)
    old_guard = dict(meta.ood)
    stale = {**meta.reference, "guard_quantiles": [0.0] * 101}  # a reference whose guard part must be redone
    save_checkpoint(copy, model, ModelMeta.from_dict({**meta.to_dict(), "reference": stale}))
    assert main(["refit-guard", str(trained_run), "--checkpoint", str(copy), "--quiet"]) == 0
    refit_model, refit_meta = load_checkpoint(copy)
    assert refit_meta.reference["guard_quantiles"] == pytest.approx(meta.reference["guard_quantiles"], rel=1e-3)
    assert refit_meta.ood["threshold"] == pytest.approx(old_guard["threshold"], rel=1e-3)
    np.testing.assert_allclose(refit_meta.ood["mean"], old_guard["mean"], atol=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, refit_model.state_dict()[key]), key
    assert (refit_meta.temperature, refit_meta.classes) == (meta.temperature, meta.classes)


def test_refit_guard_needs_a_run_directory(tmp_path: Path, capsys) -> None:
    assert main(["refit-guard", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("nowhere: not a run directory (no config.json)") and "\n" not in err


def test_refit_guard_refuses_another_runs_model(trained_run: Path, checkpoint_factory, tmp_path: Path, capsys) -> None:
    from cxrscreen.data.transforms import Preprocessing

    other = checkpoint_factory(tmp_path / "other.pt", pp=Preprocessing(img_size=96))
    assert main(["refit-guard", str(trained_run), "--checkpoint", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other.pt" in err and "not a model of the run" in err and "\n" not in err


def test_split_keeps_near_duplicates_on_one_side(trained_run: Path) -> None:
    from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, hamming_distances

    rows = list(csv.DictReader((trained_run / "split.csv").open()))
    assert all(r["phash"] for r in rows)
    sides = {side: [r["phash"] for r in rows if r["split"] == side] for side in ("train", "val", "test")}
    assert all(sides.values())
    # The fixture holds near-duplicates (each copy within the threshold of its original, some of them by more
    # than a bit or two), so a split that ignored them, or used a smaller threshold, would put some across sides.
    copies = [r for r in rows if "-shift" in r["path"]]
    by_path = {r["path"]: r for r in rows}
    originals = [by_path[r["path"].split("-shift")[0] + ".jpg"] for r in copies]
    distances = np.diag(hamming_distances([r["phash"] for r in copies], [r["phash"] for r in originals]))
    assert len(copies) == 6 * len(SHIFTS) and (distances <= DEFAULT_MAX_DISTANCE).all(), distances
    assert (distances > 2).sum() >= 3, distances
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        closest = hamming_distances(sides[a], sides[b]).min()
        assert closest > DEFAULT_MAX_DISTANCE, f"{a}/{b}: images {closest} bits per 64 apart"


def test_finished_run_is_not_overwritten(trained_run: Path, small_radiography: Path, capsys) -> None:
    before = (trained_run / "best.pt").read_bytes()
    assert main(train_args(small_radiography, trained_run)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (trained_run / "best.pt").read_bytes() == before


def test_resume_of_a_finished_run_is_refused(trained_run: Path, capsys) -> None:
    assert main(["train", "--resume", str(trained_run), "--quiet"]) == 2
    assert "already finished" in capsys.readouterr().err


def test_reused_split_gives_the_same_sides(trained_run: Path, radiography_with_duplicates: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(train_args(radiography_with_duplicates, out, "--split", str(trained_run / "split.csv"))) == 0
    first = {r["path"]: r["split"] for r in csv.DictReader((trained_run / "split.csv").open())}
    second = {r["path"]: r["split"] for r in csv.DictReader((out / "split.csv").open())}
    assert first == second


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/data"], "/nonexistent/data"),
        (["--classes", "covid,martian"], "martian"),
        (["--epochs", "0"], "--epochs"),
        (["--model", "resnet9000"], "resnet9000"),
    ],
)
def test_user_mistakes_are_one_line_errors(args: list[str], message: str, small_radiography: Path, tmp_path: Path, capsys) -> None:
    base = ["train", "--data", str(small_radiography), "--out", str(tmp_path / "r"), "--quiet"]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_same_seed_same_first_epoch(small_radiography: Path, tmp_path: Path) -> None:
    losses = []
    for name in ("a", "b"):
        assert main(train_args(small_radiography, tmp_path / name, "--limit-per-class", "8")) == 0
        losses.append(next(csv.DictReader((tmp_path / name / "metrics.csv").open()))["train_loss"])
    assert losses[0] == losses[1]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["epochs_run"] == 1


def test_label_map_on_a_raw_label_reaches_the_training_targets(small_radiography: Path, tmp_path: Path) -> None:
    out = tmp_path / "mapped"
    assert main(train_args(small_radiography, out, "--classes", "covid,normal", "--label-map", "viral pneumonia=normal")) == 0
    rows = list(csv.DictReader((out / "split.csv").open()))
    viral = [r for r in rows if "Viral Pneumonia" in r["path"]]
    assert viral and all(r["class"] == "normal" for r in viral)
    _, meta = load_checkpoint(out / "best.pt")
    counts = meta.train_summary["images_per_split"]
    assert sum(sum(side.values()) for side in counts.values()) == len(rows)
    assert sum(side["normal"] for side in counts.values()) == sum(r["class"] == "normal" for r in rows)


def test_command_line_does_not_load_the_web_stack() -> None:
    """A training machine need not have FastAPI or uvicorn: building the command line must not import them
    (a GPU machine without them failed every ``cxrscreen train`` before this)."""
    import subprocess
    import sys

    code = ("import sys; from cxrscreen.cli import build_parser; build_parser(); "
            "import cxrscreen.serve; print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
