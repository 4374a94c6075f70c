"""Distributed training with torchrun/DDP: two gloo processes on the CPU."""

from __future__ import annotations

import csv
import re
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
               "--num-threads", "1", "--device", "cpu"]
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


@pytest.mark.parametrize(
    ("nproc", "device", "gpus", "problem"),
    [
        (2, "auto", 0, None),  # no GPU: gloo processes on the CPU
        (2, "cpu", 1, None),
        (1, "cuda", 1, None),
        (2, "cuda", 2, None),
        (2, "auto", 1, "needs one GPU per process, but 1 GPU(s) are visible"),
        (3, "cuda", 2, "needs one GPU per process, but 2 GPU(s) are visible"),
        (1, "cuda", 0, "no CUDA GPU is available"),
        (0, "cpu", 0, "at least 1"),
    ],
)
def test_nproc_is_checked_against_the_visible_gpus(nproc: int, device: str, gpus: int, problem: str | None) -> None:
    from cxrscreen.errors import ConfigError
    from cxrscreen.training.distributed import check_nproc

    if problem is None:
        check_nproc(nproc, device, gpu_count=gpus)
    else:
        with pytest.raises(ConfigError, match=re.escape(problem)):
            check_nproc(nproc, device, gpu_count=gpus)


def test_cli_refuses_more_ranks_than_gpus_before_launching(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = main(["train", "--data", "unused", "--nproc", "2", "--device", "cuda"])
    assert code == 2
    assert "needs one GPU per process" in capsys.readouterr().err
