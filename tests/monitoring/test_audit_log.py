"""The audit log: one complete JSON line per image, fsync'd, readable after a kill -9, torn lines skipped, no
patient data; `cxrscreen predict --audit-log`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cxrscreen.cli import main
from cxrscreen.errors import AuditLogError
from cxrscreen.hashing import file_sha256
from cxrscreen.monitoring.audit import AuditLog, ModelIdentity, read_audit_log
from cxrscreen.monitoring.events import ScreeningEvent, content_id

MODEL = ModelIdentity("m", "1", "ab" * 32, ("covid", "normal", "viral"))


def test_every_screened_image_is_one_line_with_what_an_auditor_needs(watched_predictor, normal_files, tmp_path):
    prediction = watched_predictor.predict(str(normal_files[0]))
    log = tmp_path / "logs" / "audit.jsonl"
    identity = ModelIdentity.of(watched_predictor)
    with AuditLog(log, identity) as audit:
        audit(ScreeningEvent("serve", content_id(normal_files[0].read_bytes()), 0.25, prediction))
        audit(ScreeningEvent("dicom", "1.2.3.4", 0.01, reason="lateral view"))
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    screened, refused = (json.loads(line) for line in lines)
    assert screened["checkpoint_sha256"] == file_sha256(watched_predictor.model_path)
    assert screened["input_id"] == "sha256:" + __import__("hashlib").sha256(normal_files[0].read_bytes()).hexdigest()
    assert screened["label"] == prediction.label and screened["decision"]["rule"] == "most_probable"
    assert screened["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-6)
    assert screened["guard_score"] == pytest.approx(prediction.ood_score, abs=1e-6)
    assert screened["guard_flag"] is (not prediction.in_distribution)
    assert screened["time"].endswith("Z") and screened["latency_s"] == 0.25
    assert normal_files[0].name not in lines[0] and normal_files[0].stem not in lines[0]  # no file names
    assert refused["screened"] is False and refused["reason"] == "lateral view" and refused["label"] is None
    assert refused["input_id"] == "1.2.3.4"


WRITER = textwrap.dedent("""
    import sys
    from cxrscreen.monitoring.audit import AuditLog, ModelIdentity
    from cxrscreen.monitoring.events import ScreeningEvent
    log = AuditLog(sys.argv[1], ModelIdentity("m", "1", "ab" * 32, ("covid", "normal", "viral")))
    n = 0
    while True:
        log(ScreeningEvent("predict", f"sha256:{n:064d}", 0.001, reason="x" * 2000))
        n += 1
        print(n, flush=True)
""")


def test_a_writer_killed_mid_stream_keeps_every_complete_line(tmp_path):
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log)], stdout=subprocess.PIPE, text=True, env=env)
    written = 0
    while written < 200:
        written = int(writer.stdout.readline())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    contents = read_audit_log(log)
    ids = [r["input_id"] for r in contents.records]
    assert len(ids) >= written  # every line reported written (fsync'd) is there
    assert ids == [f"sha256:{n:064d}" for n in range(len(ids))]  # in order, none lost or doubled
    assert len(contents.skipped) <= 1  # at most the line being written


def test_a_torn_line_is_skipped_and_the_next_writer_starts_a_fresh_line(tmp_path, capsys):
    log = tmp_path / "audit.jsonl"
    with AuditLog(log, MODEL) as audit:
        for n in range(3):
            audit(ScreeningEvent("predict", f"id{n}", 0.1, reason="r"))
    os.truncate(log, log.stat().st_size - 20)  # the last line torn, as by a power cut mid-write
    assert len(read_audit_log(log).records) == 2
    with AuditLog(log, MODEL) as audit:
        audit(ScreeningEvent("predict", "after", 0.1, reason="r"))
    contents = read_audit_log(log)
    assert [r["input_id"] for r in contents.records] == ["id0", "id1", "after"]
    assert contents.skipped and "line 3" in contents.notes()[0]


def test_a_log_without_audit_lines_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(AuditLogError, match="empty"):
        read_audit_log(empty)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"level": "info"}\nnot json\n')
    with pytest.raises(AuditLogError, match="none of its 2 line"):
        read_audit_log(foreign)
    with pytest.raises(AuditLogError, match="cannot read"):
        read_audit_log(tmp_path / "missing.jsonl")


def test_predict_audit_log_has_a_line_per_file_failures_included(watched_predictor, normal_files, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    log = tmp_path / "audit.jsonl"
    code = main(["predict", *map(str, normal_files[:3]), str(bad), "--model", str(watched_predictor.model_path),
                 "--audit-log", str(log), "--format", "csv"])
    assert code == 1  # one file failed
    records = read_audit_log(log).records
    assert [r["screened"] for r in records] == [True, True, True, False]
    assert records[3]["reason"] and "broken" not in log.read_text()  # the reason, without the file's name
    assert {r["door"] for r in records} == {"predict"}
    assert records[3]["input_id"] == content_id(bad.read_bytes())
