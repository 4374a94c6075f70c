"""What cxrscreen writes: files with the mode the user's umask gives, errors that name the user's path (never a hidden
temporary file), and output folders checked before any work is done or printed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cxrscreen.cli import main
from cxrscreen.io_utils import atomic_write, write_json


@pytest.fixture
def umask():
    """``umask(value)`` sets the process's umask for the test; the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives(umask, tmp_path: Path, mask: int, expected: int) -> None:
    umask(mask)
    with atomic_write(tmp_path / "model.onnx", "wb") as fh:
        fh.write(b"graph")
    write_json(tmp_path / "run" / "metrics.json", {"auroc": 0.9})
    assert mode(tmp_path / "model.onnx") == expected and mode(tmp_path / "run" / "metrics.json") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "run"]  # no temporary file left


def test_plots_of_data_summary_follow_the_umask(umask, small_radiography: Path, tmp_path: Path, capsys) -> None:
    umask(0o002)
    assert main(["data", "summary", str(small_radiography), "--plots", str(tmp_path / "plots"), "--no-dedup", "--quiet"]) == 0
    written = sorted((tmp_path / "plots").iterdir())
    assert written and {mode(path) for path in written} == {0o664}


def test_an_error_names_the_file_asked_for_not_the_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "normal5_gradcam.png"
    target.mkdir()  # a folder where the file should go: the rename over it fails
    with pytest.raises(OSError) as caught:
        with atomic_write(target, "wb") as fh:
            fh.write(b"png")
    assert caught.value.filename == str(target) and ".tmp" not in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # the temporary file is gone


@pytest.mark.parametrize("command", ["summary", "predict", "explain", "segment"])
def test_an_output_folder_that_is_a_file_fails_first_with_the_real_problem(
    command: str, small_radiography: Path, tmp_path: Path, capsys
) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("a file\n")
    image = str(next(small_radiography.rglob("*.jpg")))
    option, argv = {
        "summary": ("--plots", ["data", "summary", str(small_radiography), "--plots", str(existing), "--no-dedup"]),
        "predict": ("--explain", ["predict", image, "--explain", str(existing)]),
        "explain": ("--out", ["explain", image, "--out", str(existing)]),
        "segment": ("--out", ["segment", image, "--out", str(existing)]),
    }[command]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing printed before the failure (README: nothing on stdout then)
    assert err == f"cxrscreen: error: {option} {existing}: is a file, not a folder (give a folder for the output files)\n"


def test_an_output_folder_inside_a_file_says_it_cannot_be_written(small_radiography: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x\n")
    assert main(["data", "summary", str(small_radiography), "--plots", str(blocker / "plots"), "--no-dedup"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"cxrscreen: error: --plots {blocker / 'plots'}: cannot write there (Not a directory)\n"
