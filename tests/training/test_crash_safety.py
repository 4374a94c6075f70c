"""Crash-safe training: a run killed mid-epoch (SIGKILL) or interrupted (SIGINT) resumes from its last completed
epoch with the same config and split, and finishes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrscreen.models.checkpoint import read_checkpoint

EPOCHS = 6


def start_training(data: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "cxrscreen", "train", "--data", str(data), "--img-size", "96", "--epochs",
               str(EPOCHS), "--batch-size", "4", "--patience", "99", "--out", str(out), "--quiet", "--num-threads", "1"]
    # A shell that starts the tests in the background (`cmd &`) ignores SIGINT, and children inherit that: Python
    # then installs no KeyboardInterrupt handler. Restore the default so the SIGINT test tests cxrscreen.
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_epochs(out: Path, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait until the run has saved epoch ``n`` (its resume point, ``last.pt``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "last.pt").exists() and completed_epoch(out) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("training did not reach its first epoch in time")


def completed_epoch(out: Path) -> int:
    return int(read_checkpoint(out / "last.pt")["extra"]["state"]["epoch"])


def resume(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrscreen", "train", "--resume", str(out), "--quiet", "--num-threads", "1"],
                          capture_output=True, text=True, timeout=900)


def assert_finished_once_per_epoch(out: Path) -> None:
    epochs = [int(r["epoch"]) for r in csv.DictReader((out / "metrics.csv").open())]
    assert epochs == list(range(1, EPOCHS + 1))
    assert (out / "summary.json").is_file()
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(small_radiography: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start_training(small_radiography, out)
    wait_for_epochs(out, 1, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    config_before = (out / "config.json").read_text()
    split_before = (out / "split.csv").read_text()
    done = completed_epoch(out)
    assert 1 <= done < EPOCHS
    result = resume(out)
    assert result.returncode == 0, result.stderr
    assert f"after epoch {done}" in result.stdout
    assert (out / "config.json").read_text() == config_before
    assert (out / "split.csv").read_text() == split_before
    assert_finished_once_per_epoch(out)


@pytest.mark.slow
def test_sigint_stops_cleanly_and_resumes(small_radiography: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start_training(small_radiography, out)
    wait_for_epochs(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    done = completed_epoch(out)
    # The interrupt comes within a poll of epoch 1's save, epochs before the run's end: the resume must resume.
    # (An exact interrupted-vs-uninterrupted comparison, deterministic, is in test_learning.py.)
    assert 1 <= done < EPOCHS
    assert not (out / "summary.json").exists()
    result = resume(out)
    assert result.returncode == 0, result.stderr
    assert f"after epoch {done}" in result.stdout
    assert_finished_once_per_epoch(out)


@pytest.mark.slow
def test_run_killed_with_only_its_best_checkpoint_can_be_finished(small_radiography: Path, tmp_path: Path) -> None:
    """As when a lent GPU machine's time ran out: the run is killed, only best.pt and the logs are kept."""
    import torch

    from cxrscreen.cli import main
    from cxrscreen.models.checkpoint import load_checkpoint

    out = tmp_path / "run"
    proc = start_training(small_radiography, out)
    wait_for_epochs(out, 2, proc)
    proc.kill()
    proc.wait()
    (out / "last.pt").unlink()
    before = read_checkpoint(out / "best.pt")
    assert not before["meta"].get("ood") and not before["meta"].get("train_hashes")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    best_epoch = int(max(rows, key=lambda r: float(r["val_macro_f1"]))["epoch"])  # first of equal scores

    config = (out / "config.json").read_bytes()
    assert main(["train", "--finish", str(out), "--quiet", "--num-threads", "1"]) == 0
    assert (out / "config.json").read_bytes() == config  # the run's own record is kept
    model, meta = load_checkpoint(out / "best.pt")
    assert meta.ood and meta.ood["n_fit"] > 0
    split = list(csv.DictReader((out / "split.csv").open()))
    assert len(meta.train_hashes) == sum(1 for r in split if r["split"] == "train")
    assert meta.metrics["best_epoch"] == best_epoch
    assert 0.0 <= meta.metrics["test"]["accuracy"]["value"] <= 1.0
    for key, value in before["state_dict"].items():
        assert torch.equal(value, model.state_dict()[key]), key  # finishing does not train
    assert (out / "summary.json").is_file()
    assert main(["train", "--finish", str(out), "--quiet"]) == 2  # already finished


def test_finish_needs_a_best_checkpoint(tmp_path: Path, capsys) -> None:
    from cxrscreen.cli import main

    (tmp_path / "config.json").write_text('{"data": ["x"], "out": "x"}')
    assert main(["train", "--finish", str(tmp_path), "--quiet"]) == 2
    assert "needs best.pt and split.csv" in capsys.readouterr().err
