"""Training on a CUDA GPU: autocast, the on-device augmentation, torchrun on a GPU, and CPU/GPU agreement.

Skipped where no GPU is visible (CI, the development machine); run on a GPU machine with
``pytest tests/gpu``. The README reports what they gave there.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrscreen.cli import main
from cxrscreen.models.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

COMMON = ["--img-size", "64", "--epochs", "1", "--batch-size", "8", "--quiet", "--num-threads", "4", "--seed", "3"]


def train_run(data: Path, out: Path, *extra: str) -> dict[str, str]:
    assert main(["train", "--data", str(data), "--out", str(out), *COMMON, *extra]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1
    return rows[0]


def test_cuda_run_computes_what_the_cpu_run_computes(small_radiography: Path, tmp_path: Path) -> None:
    cpu = train_run(small_radiography, tmp_path / "cpu", "--device", "cpu")
    gpu = train_run(small_radiography, tmp_path / "gpu", "--device", "cuda", "--no-amp")
    # Same seed, same batches, same augmentation parameters: float32 on the GPU follows the CPU run closely.
    # (Validation accuracy is not compared: on a few images one flipped prediction moves it by a sixth.)
    assert float(gpu["train_loss"]) == pytest.approx(float(cpu["train_loss"]), rel=0.02)


def test_autocast_run_trains_and_its_checkpoint_loads_on_the_cpu(small_radiography: Path, tmp_path: Path) -> None:
    out = tmp_path / "amp"
    row = train_run(small_radiography, out, "--device", "cuda")
    assert torch.isfinite(torch.tensor(float(row["train_loss"])))
    model, meta = load_checkpoint(out / "best.pt")
    assert next(model.parameters()).device.type == "cpu"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert meta.classes == ["covid", "normal", "viral"]
    eval_out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(out), "--data", str(small_radiography), "--out", str(eval_out),
                 "--bootstrap", "50"]) == 0
    assert (eval_out / "metrics.json").is_file()


def test_torchrun_on_one_gpu_and_refusal_of_two(small_radiography: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "cxrscreen", "train", "--data", str(small_radiography), "--device", "cuda", *COMMON]
    one = subprocess.run([*base, "--nproc", "1", "--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    assert (tmp_path / "one" / "best.pt").is_file()
    too_many = torch.cuda.device_count() + 1
    refused = subprocess.run([*base, "--nproc", str(too_many), "--out", str(tmp_path / "many")], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2
    assert "needs one GPU per process" in refused.stderr
    assert not (tmp_path / "many").exists()
