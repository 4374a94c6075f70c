"""Training learns, stops early at the right epoch keeping the best weights, and resumes to the same result.

A synthetic task that a working trainer separates in a few epochs (horizontal stripes, vertical stripes, a
checkerboard, each over its own smooth random background, so no two images are near-duplicates): a no-op optimiser
step, an early stop that fires late or keeps the last epoch, or a resume that does not restore what the
uninterrupted run had, each fails here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cxrscreen.cli import main
from cxrscreen.models.checkpoint import read_checkpoint
from cxrscreen.training import trainer as trainer_module

CLASSES = ("covid", "normal", "viral")
PER_CLASS = 20
EPOCHS, PATIENCE, INTERRUPT_AFTER = 6, 2, 2
AMPLITUDE = 0.2  # the pattern's share of the grey range


def stripes_image(rng: np.random.Generator, cls: int, size: int = 128) -> np.ndarray:
    """uint8 (size, size): a class pattern (period 8-12% of the side, random phase) over a smooth random field."""
    coarse = Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    base = 0.25 + 0.5 * np.asarray(coarse, dtype=np.float64) / 255.0
    yy, xx = np.mgrid[0:size, 0:size] / size
    period, phase = rng.uniform(0.08, 0.12), rng.uniform(0.0, 1.0)
    rows, columns = np.sin(2 * np.pi * (yy / period + phase)), np.sin(2 * np.pi * (xx / period + phase))
    pattern = (rows, columns, rows * columns)[cls]
    return (np.clip(base + AMPLITUDE * pattern, 0.0, 1.0) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def separable_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder-per-class tree of PER_CLASS synthetic images per class."""
    root = tmp_path_factory.mktemp("separable") / "stripes"
    rng = np.random.default_rng(0)
    for cls, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(stripes_image(rng, cls), mode="L").save(root / name / f"{name}_{i:02d}.png")
    return root


def train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--img-size", "64", "--epochs", str(EPOCHS), "--batch-size", "8",
            "--patience", str(PATIENCE), "--out", str(out), "--quiet", "--num-threads", "1", "--device", "cpu"]


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def record_weights(monkeypatch: pytest.MonkeyPatch, interrupt_after: int | None = None) -> dict[Any, dict]:
    """Keep the model's parameters after set-up (key ``"start"``) and after each epoch (key: the epoch); with
    ``interrupt_after``, a Ctrl-C right after that epoch is saved (what a user's interrupt between epochs does)."""
    weights: dict[Any, dict] = {}
    setup, record_epoch = trainer_module.Trainer.setup, trainer_module.Trainer.record_epoch

    def setup_and_keep(self, resume: bool) -> None:
        setup(self, resume)
        weights.setdefault("start", parameters(self.model))

    def record_and_keep(self, epoch: int, *args, **kwargs) -> None:
        record_epoch(self, epoch, *args, **kwargs)
        weights[epoch] = parameters(self.model)
        if epoch == interrupt_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "setup", setup_and_keep)
    monkeypatch.setattr(trainer_module.Trainer, "record_epoch", record_and_keep)
    return weights


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv without its throughput column (wall-clock, differs between any two runs)."""
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in csv.DictReader((run / "metrics.csv").open())]


def expected_stop_epoch(scores: list[float], patience: int) -> int:
    """The epoch early stopping must end on: the first with ``patience`` epochs without a new best."""
    best, waited = -np.inf, 0
    for epoch, score in enumerate(scores, start=1):
        best, waited = (score, 0) if score > best + 1e-6 else (best, waited + 1)
        if waited >= patience:
            return epoch
    return len(scores)


@pytest.fixture(scope="module")
def uninterrupted_run(separable_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("learn") / "run"
    with pytest.MonkeyPatch.context() as patch:
        weights = record_weights(patch)
        assert main(train_args(separable_data, out)) == 0
    return out, weights


@pytest.mark.slow
def test_training_learns_the_task_and_changes_the_weights(uninterrupted_run: tuple[Path, dict]) -> None:
    run, weights = uninterrupted_run
    summary = json.loads((run / "summary.json").read_text())
    test = summary["test"]
    assert test["n_images"] >= 9
    # Chance is 1/3; the best epoch sorts all but at most one held-out image.
    assert test["accuracy"]["value"] >= 1 - 1.5 / test["n_images"], test["accuracy"]
    rows = metrics_rows(run)
    assert float(rows[-1]["train_loss"]) < 0.7 * float(rows[0]["train_loss"])
    best = read_checkpoint(run / "best.pt")["state_dict"]
    start = weights["start"]
    changed = [name for name in start if not torch.equal(start[name], best[name])]
    assert len(changed) == len(start), f"parameters the training never moved: {sorted(set(start) - set(changed))[:5]}"


@pytest.mark.slow
def test_early_stopping_stops_on_time_and_keeps_the_best_epoch(uninterrupted_run: tuple[Path, dict]) -> None:
    run, weights = uninterrupted_run
    rows = metrics_rows(run)
    scores = [float(r["val_macro_f1"]) for r in rows]
    stop = expected_stop_epoch(scores, PATIENCE)
    assert stop < EPOCHS, f"the task should plateau before epoch {EPOCHS}: {scores}"
    assert len(rows) == stop, f"ran {len(rows)} epochs, should have stopped after {stop}: {scores}"
    summary = json.loads((run / "summary.json").read_text())
    best_epoch = int(np.argmax(scores)) + 1  # the first of equal best scores
    assert (summary["best_epoch"], summary["epochs_run"]) == (best_epoch, stop)
    assert best_epoch < stop
    best = read_checkpoint(run / "best.pt")["state_dict"]
    for name, value in weights[best_epoch].items():
        assert torch.equal(best[name], value), name
    last = read_checkpoint(run / "last.pt")["state_dict"]
    assert any(not torch.equal(last[name], value) for name, value in weights[best_epoch].items())


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_as_the_uninterrupted_one(
    uninterrupted_run: tuple[Path, dict], separable_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    reference, _ = uninterrupted_run
    assert INTERRUPT_AFTER < len(metrics_rows(reference)), "the interrupt must come before the run ends"
    out = tmp_path / "run"
    record_weights(monkeypatch, interrupt_after=INTERRUPT_AFTER)
    assert main(train_args(separable_data, out)) == 130
    assert not (out / "summary.json").exists()
    assert read_checkpoint(out / "last.pt")["extra"]["state"]["epoch"] == INTERRUPT_AFTER
    monkeypatch.undo()
    capsys.readouterr()

    assert main(["train", "--resume", str(out), "--quiet", "--num-threads", "1"]) == 0
    assert f"resuming {out} after epoch {INTERRUPT_AFTER}" in capsys.readouterr().out
    assert metrics_rows(out) == metrics_rows(reference)
    for name in ("best.pt", "last.pt"):
        resumed, uninterrupted = read_checkpoint(out / name), read_checkpoint(reference / name)
        for key, value in uninterrupted["state_dict"].items():
            assert torch.equal(resumed["state_dict"][key], value), f"{name}: {key}"
    summary, expected = (json.loads((run / "summary.json").read_text()) for run in (out, reference))
    for key in ("best_epoch", "best_score", "epochs_run", "temperature", "test"):
        assert summary[key] == expected[key], key
