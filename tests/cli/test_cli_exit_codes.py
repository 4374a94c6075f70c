"""Exit codes as the README says, for every subcommand: a user mistake (missing path, unusable output path) is one
line on stderr and exit 2, nothing on stdout; 1 is for files that failed in a batch whose others were done."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrscreen.cli import main

MISSING = "/nonexistent/cxrscreen-test"


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.add.outer(np.arange(96), np.arange(80)).astype(np.uint8)
    Image.fromarray(ramp).save(path, format="PNG")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory) -> str:
    return str(checkpoint_factory(tmp_path_factory.mktemp("model") / "tiny.pt"))


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSCREEN_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", MISSING, "--model", "{model}"],
        ["predict", MISSING, "--model", "{model}", "--format", "csv"],
        ["explain", MISSING, "--model", "{model}", "--out", "{tmp}/cams"],
        ["segment", MISSING, "--out", "{tmp}/lungs"],
        ["data", "cache", MISSING],
        ["data", "summary", MISSING],
        ["data", "split", "--data", MISSING, "--out", "{tmp}/split.csv"],
        ["export", "--model", MISSING, "--onnx", "{tmp}/m.onnx"],
        ["evaluate", "--model", MISSING],
        ["evaluate", "--model", "{model}", "--data", MISSING],
        ["audit", "--model", MISSING],
        ["train", "--data", MISSING, "--out", "{tmp}/run"],
        ["train", "--resume", MISSING],
        ["crossval", "--data", MISSING, "--out", "{tmp}/cv"],
        ["refit-guard", MISSING],
        ["report", MISSING],
        ["segment", "train", "--data", MISSING, "--out", "{tmp}/seg.pt"],
    ],
    ids=lambda argv: " ".join(a for a in argv if not a.startswith(("{", "/"))),
)
def test_a_missing_path_is_one_line_and_exit_2(capsys, model: str, tmp_path: Path, argv: list[str]) -> None:
    code, out, err = run(capsys, *(a.format(model=model, tmp=tmp_path) for a in argv))
    assert code == 2, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and MISSING in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "{image}", "--model", "{model}", "--out", "{blocker}/cams"],
        ["predict", "{image}", "--model", "{model}", "--explain", "{blocker}/cams"],
        ["segment", "{image}", "--out", "{blocker}/lungs"],
        ["export", "--model", "{model}", "--onnx", "{blocker}/m.onnx"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_output_path_that_cannot_be_written_is_one_line_and_exit_2(capsys, model: str, tmp_path: Path, argv) -> None:
    image = png(tmp_path / "xray.png")
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    code, _, err = run(capsys, *(a.format(model=model, image=image, blocker=blocker) for a in argv))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(blocker) in err and "Traceback" not in err, err


def test_data_cache_exit_codes_and_skipped_files(capsys, tmp_path: Path) -> None:
    folder = tmp_path / "pacs"
    png(folder / "IM000001")
    (folder / "IM000002").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    (folder / "notes.txt").write_text("not an image")
    code, out, err = run(capsys, "data", "cache", str(folder), "--img-size", "32")
    assert code == 1
    assert "0 already cached, 1 built, 1 failed" in out
    assert err.splitlines()[0] == f"{folder}: skipped 1 file(s) that are not PNG, JPEG or DICOM"
    assert err.splitlines()[1].startswith(f"{folder / 'IM000002'}: ")
    code, out, _ = run(capsys, "data", "cache", str(folder / "IM000001"), "--img-size", "32")
    assert code == 0 and "1 already cached, 0 built, 0 failed" in out
