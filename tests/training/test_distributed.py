"""Distributed training with torchrun/DDP: two gloo processes on the CPU."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrscreen.cli import main
from cxrscreen.models.checkpoint import load_checkpoint


@pytest.mark.slow
def test_two_process_gloo_run_trains_and_its_checkpoint_evaluates(small_radiography: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "cxrscreen", "train", "--nproc", "2", "--data", str(small_radiography),
               "--img-size", "64", "--epochs", "1", "--batch-size", "4", "--out", str(out), "--quiet",
               "--num-threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 writes: one line per epoch, one final line.
    assert result.stdout.count("epoch 1:") == 1
    model, meta = load_checkpoint(out / "best.pt")
    assert meta.classes == ["covid", "normal", "viral"]
    assert meta.train_summary["images_per_split"]["train"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1
    eval_out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(out), "--data", str(small_radiography), "--out", str(eval_out), "--bootstrap", "50"]) == 0
    assert (eval_out / "metrics.json").is_file()
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(1, 1, 64, 64))).all()
