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


GLOBAL_BATCH, STEPS = 8, 2


def tiny_net() -> torch.nn.Module:
    """A small conv net without batch norm (whose statistics DDP keeps per rank), seeded alike in every process."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(16, 3))


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.rand(GLOBAL_BATCH, 1, 12, 12, generator=generator), torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator))
            for _ in range(STEPS)]


def train_steps(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """cxrscreen's model wrapping and training step on this rank's half of each global batch; the weights after."""
    from cxrscreen.training.distributed import init_distributed, wrap_model
    from cxrscreen.training.steps import train_step

    ctx = init_distributed("cpu")
    model = tiny_net()
    net = wrap_model(model, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, y in global_batches():
        share = slice(rank, None, world_size)
        train_step(net, optimizer, torch.nn.CrossEntropyLoss(), x[share], y[share])
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def ddp_rank(rank: int, world_size: int, port: int, out: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from cxrscreen.training.distributed import shutdown_distributed

    try:
        torch.save(train_steps(rank, world_size), f"{out}/rank{rank}.pt")
    finally:
        shutdown_distributed()


def test_ddp_ranks_take_the_step_of_the_global_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two gloo ranks, each on half of every batch, end with the same weights as one process on the whole batch."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = train_steps(0, 1)
    for name, value in alone.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=f"ranks differ: {name}")
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=f"not the global batch's step: {name}")
    assert any(not torch.equal(value, tiny_net().state_dict()[name]) for name, value in alone.items())


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
