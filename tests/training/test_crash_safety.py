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
    assert done >= 1
    if done < EPOCHS:
        result = resume(out)
        assert result.returncode == 0, result.stderr
        assert f"after epoch {done}" in result.stdout
    assert_finished_once_per_epoch(out)
