"""`cxrscreen monitor`: a table or JSON per look, exit 1 while an alarm stands, a plot, and one-line errors for an
empty log, a log of another model, a torn line and a model without a reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrscreen.cli import main
from cxrscreen.monitoring.audit import AuditLog, ModelIdentity
from cxrscreen.monitoring.events import ScreeningEvent


def write_log(path: Path, predictor, sources) -> Path:
    with AuditLog(path, ModelIdentity.of(predictor)) as audit:
        for i, prediction in enumerate(predictor.predict_batch(sources)):
            audit(ScreeningEvent("predict", f"sha256:{i:064x}", 0.05, prediction))
    return path


@pytest.fixture(scope="module")
def calm_log(watched_predictor, normal_files, tmp_path_factory) -> Path:
    return write_log(tmp_path_factory.mktemp("calm") / "audit.jsonl", watched_predictor, [str(p) for p in normal_files])


@pytest.fixture(scope="module")
def drifted_log(watched_predictor, tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    noise = [rng.random((200, 200)).astype(np.float32) for _ in range(40)]
    return write_log(tmp_path_factory.mktemp("drift") / "audit.jsonl", watched_predictor, noise)


def run(args, capsys) -> tuple[int, str, str]:
    code = main(["monitor", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_images_like_the_reference_raise_no_alarm(watched_predictor, calm_log, capsys):
    code, out, err = run([calm_log, "--model", watched_predictor.model_path], capsys)
    assert code == 0, out + err
    assert "no alarm stands" in out and "reference" in out and "30 screened image(s)" in out


def test_drift_is_an_alarm_naming_what_moved(watched_predictor, drifted_log, tmp_path, capsys):
    plot = tmp_path / "drift.png"
    code, out, err = run([drifted_log, "--model", watched_predictor.model_path, "--plot", plot], capsys)
    assert code == 1
    assert "ALARM" in out and "guard flags" in out.splitlines()[-1]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run([drifted_log, "--model", watched_predictor.model_path, "--format", "json"], capsys)
    report = json.loads(out)
    assert code == 1 and report["alarm"] is True and "guard flags" in report["first_alarm"]["moved"]
    assert report["screened"] == 40 and report["looks"][-1]["last"] == 40


def test_a_torn_last_line_is_skipped_with_a_warning(watched_predictor, calm_log, tmp_path, capsys):
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(calm_log.read_bytes()[:-30])
    code, out, err = run([torn, "--model", watched_predictor.model_path], capsys)
    assert code == 0 and "line 30 skipped (torn line)" in err and "29 screened" in out
    assert "Traceback" not in err


def test_bad_logs_are_one_line_errors(watched_predictor, calm_log, checkpoint_factory, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run([empty, "--model", watched_predictor.model_path], capsys)
    assert code == 2 and err.count("\n") == 1 and "empty" in err
    code, _, err = run([calm_log], capsys)  # not a bundled model's log and no --model
    assert code == 2 and "pass its file with --model" in err
    other = watched_predictor.model_path.with_name("other.pt")
    other.write_bytes(watched_predictor.model_path.read_bytes() + b"")  # same meta, another file
    with other.open("ab") as fh:
        fh.write(b"\0")  # a different file: another checkpoint hash
    code, _, err = run([calm_log, "--model", other], capsys)
    assert code == 2 and "written by another model" in err and err.count("\n") == 1
    bare = checkpoint_factory(tmp_path / "bare.pt")
    code, _, err = run([calm_log, "--model", bare], capsys)
    assert code == 2 and "carries no drift reference" in err
    code, _, err = run([tmp_path / "missing.jsonl"], capsys)
    assert code == 2 and "cannot read" in err
