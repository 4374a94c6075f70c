"""Distributed training with torchrun/DDP: two gloo processes on the CPU."""

from __future__ import annotations

import csv
import json
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_train_and_evaluate(small_radiography: Path, tmp_path: Path) -> None:
    """Two torchrun "machines" on loopback, each with its own --out and its own cache: rank 0 hands the split over
    the process group (rank 1 never sees node 0's split.csv), node 0 keeps the checkpoints."""
    import os

    def run_nodes(*arguments: str) -> None:
        port, nodes = free_port(), []
        for node in (0, 1):
            env = {**os.environ, "CXRSCREEN_CACHE": str(tmp_path / f"cache{node}")}
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                       "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                       "-m", "cxrscreen", "train", *(a.replace("NODE", str(node)) for a in arguments), "--quiet",
                       "--num-threads", "1", "--device", "cpu"]
            nodes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        try:
            outputs = [node.communicate(timeout=300) for node in nodes]
        finally:  # a hang (ranks that disagree) must not leave processes behind
            for node in nodes:
                if node.poll() is None:
                    node.terminate()  # torchrun passes SIGTERM on to its workers
                    node.wait(timeout=30)
        for node, (_, err) in zip(nodes, outputs):
            assert node.returncode == 0, err[-3000:]

    run_nodes("--data", str(small_radiography), "--img-size", "64", "--epochs", "1", "--batch-size", "4",
              "--out", str(tmp_path / "nodeNODE"))
    main_out, other_out = tmp_path / "node0", tmp_path / "node1"
    assert (main_out / "best.pt").is_file() and len(list(csv.DictReader((main_out / "metrics.csv").open()))) == 1
    # The other machine's --out: the run's config and the split it received, no checkpoint.
    assert sorted(p.name for p in other_out.iterdir()) == ["config.json", "split.csv"]
    assert (other_out / "split.csv").read_text() == (main_out / "split.csv").read_text()
    # Each machine prepared the images into its own cache; only rank 0 hashed them to make the split.
    for node in (0, 1):
        assert any((tmp_path / f"cache{node}" / "prepared").rglob("*.npy"))
    assert not any((tmp_path / "cache1").glob("phash*"))
    eval_out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(main_out), "--data", str(small_radiography), "--out", str(eval_out),
                 "--bootstrap", "50"]) == 0
    assert (eval_out / "metrics.json").is_file()

    # Resuming: only rank 0's --out holds last.pt; rank 1 gets the weights, optimizer and epoch from rank 0 (else it
    # would start again at epoch 1 and the ranks' collectives would not match).
    (main_out / "summary.json").unlink()
    for out in (main_out, other_out):
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    run_nodes("--resume", str(tmp_path / "nodeNODE"))
    assert [row["epoch"] for row in csv.DictReader((main_out / "metrics.csv").open())] == ["1", "2"]
    assert not (other_out / "last.pt").exists()


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
    import torch.multiprocessing as mp

    mp.spawn(ddp_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = train_steps(0, 1)
    for name, value in alone.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=f"ranks differ: {name}")
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=f"not the global batch's step: {name}")
    assert any(not torch.equal(value, tiny_net().state_dict()[name]) for name, value in alone.items())


def handover_rank(rank: int, port: int, out: str) -> None:
    """What rank 0 decides reaches rank 1; a rank whose images differ from rank 0's stops every rank alike."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from cxrscreen.errors import DatasetLayoutError
    from cxrscreen.training.distributed import broadcast_from_main, check_same_as_main, init_distributed, shutdown_distributed

    ctx = init_distributed("cpu")
    try:
        received = broadcast_from_main({"a.png": "train"} if rank == 0 else None, ctx)
        check_same_as_main("same", "the prepared images", ctx)
        try:
            check_same_as_main(f"images of rank {rank}", "the prepared images", ctx)
            outcome = "no error"
        except DatasetLayoutError as exc:
            outcome = str(exc)
        torch.save({"received": received, "outcome": outcome}, f"{out}/rank{rank}.pt")
    finally:
        shutdown_distributed()


def test_rank_0_hands_its_decisions_over_and_a_differing_rank_stops_all(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(handover_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert [r["received"] for r in results] == [{"a.png": "train"}] * 2
    for result in results:
        assert result["outcome"].startswith("rank 1 on ")
        assert "the prepared images differ(s) from rank 0's" in result["outcome"]


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
