"""``train --shards``: a run streams its training side from ``data shard --split`` shards (over http here), refuses
shards that hold other images than its training side, and a run interrupted in the middle of an epoch resumes to the
same metrics and weights as the uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_learning import CLASSES, metrics_rows, stripes_image
from test_shard_stream import http_root  # noqa: F401 (a fixture)

from cxrscreen.cli import main
from cxrscreen.models.checkpoint import read_checkpoint
from cxrscreen.training import trainer as trainer_module

EPOCHS = 3


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """12 synthetic images per class, their split and the shards of its training side (4 images per shard)."""
    base = tmp_path_factory.mktemp("sharded")
    data, rng = base / "stripes", np.random.default_rng(1)
    for cls, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(stripes_image(rng, cls), mode="L").save(data / name / f"{name}_{i:02d}.png")
    split = base / "split.csv"
    assert main(["data", "split", "--data", str(data), "--out", str(split), "--quiet"]) == 0
    assert main(["data", "shard", "--data", str(data), "--split", str(split), "--out", str(base / "shards"),
                 "--img-size", "64", "--shard-size", "4"]) == 0
    return data, split, base / "shards"


def shard_args(data: Path, split: Path, shards: str, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--split", str(split), "--shards", shards, "--img-size", "64", "--epochs",
            str(EPOCHS), "--batch-size", "4", "--patience", "99", "--out", str(out), "--quiet", "--num-threads", "1",
            "--device", "cpu"]


@pytest.mark.slow
def test_a_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_run(
    sharded: tuple[Path, Path, Path], http_root: tuple[Path, str], tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    data, split, shards = sharded
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["side"] == "train" and len(manifest["shards"]) >= 2
    served, url = http_root
    (served / "shards").symlink_to(shards)

    reference = tmp_path / "reference"
    assert main(shard_args(data, split, url, reference)) == 0  # streamed over http
    summary = json.loads((reference / "summary.json").read_text())
    assert sum(summary["data"]["images_per_split"]["train"].values()) == manifest["samples"]
    # The guard fits on the training and validation images, read for it through the cache (not from the shards).
    n_val = sum(summary["data"]["images_per_split"]["val"].values())
    assert read_checkpoint(reference / "best.pt")["meta"]["ood"]["n_fit"] == manifest["samples"] + n_val
    steps = -(-manifest["samples"] // 4)  # one rank: every training image, in batches of 4

    calls, train_step = [], trainer_module.train_step

    def interrupt_mid_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == steps + 2:  # the third batch of epoch 2
            raise KeyboardInterrupt
        return train_step(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "train_step", interrupt_mid_epoch_2)
    assert main(shard_args(data, split, str(shards), out)) == 130  # from the folder
    assert "interrupted in epoch 2" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet", "--num-threads", "1"]) == 0
    assert metrics_rows(out) == metrics_rows(reference) and len(metrics_rows(out)) == EPOCHS
    best, expected = read_checkpoint(out / "best.pt")["state_dict"], read_checkpoint(reference / "best.pt")["state_dict"]
    assert all(torch.equal(best[name], expected[name]) for name in expected)


def test_shards_of_a_whole_collection_or_another_split_are_refused(sharded: tuple[Path, Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    data, split, _ = sharded
    whole = tmp_path / "whole"
    assert main(["data", "shard", "--data", str(data), "--out", str(whole), "--img-size", "64"]) == 0
    assert main(shard_args(data, split, str(whole), tmp_path / "a")) == 2
    assert "not a split's training side" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    assert main(["data", "split", "--data", str(data), "--out", str(other), "--seed", "5", "--quiet"]) == 0
    assert main(shard_args(data, other, str(sharded[2]), tmp_path / "b")) == 2
    assert "other images than this run's training side" in capsys.readouterr().err
    assert main([*shard_args(data, split, str(sharded[2]), tmp_path / "c"), "--balance", "class"]) == 2
    assert "--balance" in capsys.readouterr().err


@pytest.mark.slow
def test_two_ranks_on_uneven_shards_take_the_same_number_of_batches(sharded: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """5 shards (5, 5, 5, 5, 4 images) over 2 torchrun ranks: rank 0 holds 14 images, rank 1 10; both take 4 batches
    of 4 (rank 1 repeats 6 of its images), so DDP does not wait forever for rank 1's missing batches."""
    data, split, _ = sharded
    shards = tmp_path / "shards"
    assert main(["data", "shard", "--data", str(data), "--split", str(split), "--out", str(shards), "--img-size", "64",
                 "--shard-size", "5"]) == 0
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "cxrscreen", *shard_args(data, split, str(shards), out), "--nproc", "2"]
    command[command.index("--epochs") + 1] = "1"
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(metrics_rows(out)) == 1 and (out / "summary.json").is_file()
