"""Image files in folders are found by content, whatever their names (PACS exports: ``IM000001``, UIDs), and what
is skipped is counted; the shared pieces of the batch commands (output stems, exit codes)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badinputs.corpus import dicom_bytes, make_dicom
from cxrscreen.cli.batch import UniqueStems, batch_exit_code, image_files
from cxrscreen.data.imageio import list_image_files, load_xray
from cxrscreen.errors import ConfigError

PIXELS = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) % 4096).astype(np.uint16)


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((PIXELS // 16).astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def pacs_export(tmp_path: Path) -> Path:
    """A PACS-style export: images without extensions in series folders, beside an index and some clutter."""
    root = tmp_path / "export"
    (root / "SE0001").mkdir(parents=True)
    (root / "SE0002").mkdir()
    dicom = dicom_bytes(make_dicom(PIXELS, bits_stored=12))
    (root / "SE0001" / "IM000001").write_bytes(dicom)
    (root / "SE0002" / "IM000001").write_bytes(dicom)
    (root / "SE0002" / "1.2.840.113619.2.55.3.4").write_bytes(dicom)
    (root / "SE0002" / "scout").write_bytes(encoded("PNG"))
    (root / "SE0002" / "photo").write_bytes(encoded("JPEG"))
    (root / "plain.png").write_bytes(encoded("PNG"))
    (root / "DICOMDIR").write_bytes(dicom)  # the export's index: DICM preamble, never an image to read
    (root / "README").write_text("exported by a PACS\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def test_folders_are_read_by_content_not_by_name(pacs_export: Path) -> None:
    listing = list_image_files([pacs_export])
    names = [str(p.relative_to(pacs_export)) for p in listing.files]
    assert names == ["SE0001/IM000001", "SE0002/1.2.840.113619.2.55.3.4", "SE0002/IM000001", "SE0002/photo",
                     "SE0002/scout", "plain.png"]
    assert listing.skipped == {pacs_export: 3}
    for path in listing.files:
        assert load_xray(path).shape == (48, 64)


def test_a_folder_without_clutter_reports_nothing_skipped(tmp_path: Path) -> None:
    (tmp_path / "IM1").write_bytes(encoded("PNG"))
    assert list_image_files([tmp_path]).skipped == {}


def test_image_files_says_how_many_were_skipped(pacs_export: Path, tmp_path: Path, capsys) -> None:
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "a.png").write_bytes(encoded("PNG"))
    files = image_files([str(pacs_export), str(clean)])
    assert len(files) == 7
    assert capsys.readouterr().err.splitlines() == [f"{pacs_export}: skipped 3 file(s) that are not PNG, JPEG or DICOM"]


def test_a_folder_of_no_images_is_a_user_mistake(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="no PNG, JPEG or DICOM files found") as exc:
        image_files([str(tmp_path)])
    assert exc.value.exit_code == 2
    assert "skipped 1 file(s)" in capsys.readouterr().err


def test_output_stems_keep_uid_names_and_never_collide() -> None:
    stems = UniqueStems()
    paths = ["a/IM000001", "b/IM000001", "1.2.840.113619.2.55.3.4", "1.2.840.113619.2.55.3.5", "x/chest.dcm", "chest.png"]
    assert [stems(Path(p)) for p in paths] == [
        "IM000001", "IM000001-2", "1.2.840.113619.2.55.3.4", "1.2.840.113619.2.55.3.5", "chest", "chest-2"]


@pytest.mark.parametrize(("done", "failed", "code"), [(3, 0, 0), (2, 1, 1), (0, 1, 2), (0, 5, 2)])
def test_batch_exit_codes(done: int, failed: int, code: int) -> None:
    assert batch_exit_code(done, failed) == code


def test_dataset_folders_are_read_by_content_too(pacs_export: Path) -> None:
    """Training and evaluation list class folders through their own scan (sources.base.list_images): same rule."""
    from cxrscreen.data.sources.base import has_images, list_images

    names = [str(p.relative_to(pacs_export)) for p in list_images(pacs_export, recursive=True)]
    assert names == ["SE0001/IM000001", "SE0002/1.2.840.113619.2.55.3.4", "SE0002/IM000001", "SE0002/photo",
                     "SE0002/scout", "plain.png"]
    assert has_images(pacs_export / "SE0001")
