"""``cxrscreen dicom screen`` and ``dicom listen`` as a user meets them: result files, reasons on stderr, exit codes,
one-line errors for bad arguments."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from cxrscreen.cli import main
from dicom.conftest import PATIENT_ID, PATIENT_NAME, chest_jpegs, make_dicom, write_dicom


def test_screen_writes_results_names_what_it_skips_and_exits_by_outcome(shared_data, tmp_path, capsys) -> None:
    jpegs = chest_jpegs(shared_data, 2)
    folder = tmp_path / "study"
    folder.mkdir()
    frontal = write_dicom(make_dicom(jpegs[0]), folder / "frontal.dcm")
    lateral = write_dicom(make_dicom(jpegs[1], view="LL"), folder / "lateral.dcm")
    out = tmp_path / "out"
    assert main(["dicom", "screen", str(folder), "--out", str(out), "--outputs", "sr"]) == 0
    captured = capsys.readouterr()
    source = pydicom.dcmread(frontal)
    assert [p.name for p in out.iterdir()] == [f"{source.SOPInstanceUID}_sr.dcm"]
    assert str(frontal) in captured.out and f"{lateral}: not screened: lateral view (ViewPosition LL)" in captured.err
    assert PATIENT_NAME not in captured.out + captured.err and PATIENT_ID not in captured.out + captured.err
    # A JPEG named on the command line is refused (no patient, no study): exit 1 while the DICOM file is done.
    assert main(["dicom", "screen", str(frontal), str(jpegs[0]), "--out", str(out), "--outputs", "sr"]) == 1
    assert f"{jpegs[0]}: not a DICOM file" in capsys.readouterr().err
    assert main(["dicom", "screen", str(jpegs[0]), "--out", str(out)]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dicom", "screen", "x.dcm", "--out", "o", "--outputs", "pdf"], "--outputs 'pdf'"),
        (["dicom", "screen", "missing.dcm", "--out", "o"], "missing.dcm: file not found"),
        (["dicom", "listen", "--send-to", "PACS@nowhere"], "--send-to 'PACS@nowhere'"),
        (["dicom", "listen"], "results must go somewhere"),
        (["dicom", "listen", "--out", "o", "--ae-title", "A" * 17], "--ae-title"),
        (["dicom", "listen", "--out", "o", "--tls-cert", "c.pem"], "go together"),
        (["dicom", "listen", "--send-to", "PACS@127.0.0.1:4242", "--send-associations", "0"], "--send-associations 0"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
