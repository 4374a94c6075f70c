"""End-to-end training through the command line on a few dozen real X-rays (64 px, 1-2 epochs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cxrscreen.cli import main
from cxrscreen.models.checkpoint import load_checkpoint


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--img-size", "64", "--epochs", "1", "--batch-size", "8",
            "--out", str(out), "--quiet", "--num-threads", "2", *extra]


@pytest.fixture(scope="module")
def trained_run(small_radiography: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(train_args(small_radiography, out)) == 0
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
    assert set(meta.train_summary["images_per_split"]) == {"train", "val", "test"}
    test = meta.metrics["test"]
    assert 0.0 <= test["accuracy"]["value"] <= 1.0
    assert test["accuracy"]["ci_low"] <= test["accuracy"]["value"] <= test["accuracy"]["ci_high"]
    assert "covid_vs_rest" in test
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_refit_guard_reproduces_the_trained_guard(trained_run: Path, tmp_path: Path, capsys) -> None:
    import numpy as np

    copy = tmp_path / "copy.pt"
    copy.write_bytes((trained_run / "best.pt").read_bytes())
    model, meta = load_checkpoint(copy)
    old_guard = dict(meta.ood)
    assert main(["refit-guard", str(trained_run), "--checkpoint", str(copy), "--quiet"]) == 0
    refit_model, refit_meta = load_checkpoint(copy)
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


def test_split_keeps_patients_and_duplicates_apart(trained_run: Path) -> None:
    rows = list(csv.DictReader((trained_run / "split.csv").open()))
    sides = {r["split"] for r in rows}
    assert sides == {"train", "val", "test"}
    hashes = {side: [int(r["phash"], 16) for r in rows if r["split"] == side and r["phash"]] for side in sides}
    for a in ("train",):
        for b in ("val", "test"):
            for h in hashes[b]:
                distances = [bin(h ^ t).count("1") for t in hashes[a]]
                assert min(distances) > 6


def test_finished_run_is_not_overwritten(trained_run: Path, small_radiography: Path, capsys) -> None:
    before = (trained_run / "best.pt").read_bytes()
    assert main(train_args(small_radiography, trained_run)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (trained_run / "best.pt").read_bytes() == before


def test_resume_of_a_finished_run_is_refused(trained_run: Path, capsys) -> None:
    assert main(["train", "--resume", str(trained_run), "--quiet"]) == 2
    assert "already finished" in capsys.readouterr().err


def test_reused_split_gives_the_same_sides(trained_run: Path, small_radiography: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(train_args(small_radiography, out, "--split", str(trained_run / "split.csv"))) == 0
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
