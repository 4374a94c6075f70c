"""load_xray on real X-rays, arrays, PIL images, bytes and file objects; limits and file-system edge cases."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from badinputs.corpus import dicom_bytes, encode, make_dicom, png_header_only, reference_image, to_uint8
from cxrscreen.data import imageio
from cxrscreen.data.imageio import array_to_xray, check_size, iter_image_files, load_xray
from cxrscreen.errors import ImageDecodeError


def test_real_jpeg_matches_its_8bit_grey(radiography_root: Path) -> None:
    path = sorted((radiography_root / "COVID" / "images").glob("*.jpg"))[0]
    image = load_xray(path)
    assert image.dtype == np.float32 and image.shape == (224, 224)
    with Image.open(path) as reference:
        np.testing.assert_allclose(image, np.asarray(reference.convert("L")) / 255.0, atol=1e-6)
    assert 0.0 <= image.min() < 0.2 and 0.8 < image.max() <= 1.0  # a real radiograph spans the range


def test_real_png_of_a_real_xray_round_trips(radiography_root: Path, tmp_path: Path) -> None:
    source = load_xray(sorted((radiography_root / "Normal" / "images").glob("*.jpg"))[0])
    sixteen = np.round(source * 65535).astype(np.uint16)
    path = tmp_path / "xray16.png"
    Image.fromarray(sixteen).save(path)
    np.testing.assert_allclose(load_xray(path), sixteen / 65535.0, atol=1e-7)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array([[0, 255], [51, 102]], np.uint8), [[0, 1], [0.2, 0.4]]),
        (np.array([[0, 65535], [13107, 0]], np.uint16), [[0, 1], [0.2, 0]]),
        (np.array([[0.0, 0.5], [0.25, 1.0]], np.float32), [[0, 0.5], [0.25, 1]]),
        (np.array([[-1.0, 1.0], [0.0, 3.0]]), [[0, 0.5], [0.25, 1]]),  # outside [0, 1]: own range
        (np.array([[100, 300], [200, 500]], np.int32), [[0, 0.5], [0.25, 1]]),  # integers beyond 16 bits: own range
        (np.array([[True, False], [False, True]]), [[1, 0], [0, 1]]),
        (np.array([[[0, 255], [255, 0]]], np.uint8), [[0, 1], [1, 0]]),  # (1, H, W)
    ],
    ids=["uint8", "uint16", "float-unit", "float-other", "int32", "bool", "channel-first"],
)
def test_array_scaling(array: np.ndarray, expected) -> None:
    image = load_xray(array)
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_colour_arrays_match_pillow_luminance() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(rgb).convert("L")) / 255.0
    np.testing.assert_allclose(load_xray(rgb), pillow, atol=1 / 255)
    np.testing.assert_allclose(load_xray(Image.fromarray(rgb)), pillow, atol=1e-6)
    rgba = np.dstack([rgb, np.full((16, 16), 0, np.uint8)])
    np.testing.assert_allclose(load_xray(rgba), 0.0)  # fully transparent is black, as for RGBA PNGs


def test_pil_32bit_integer_image_is_scaled_as_16_bit() -> None:
    values = np.array([[0, 1000], [30000, 65535]], np.int32)
    image = load_xray(Image.fromarray(values, mode="I"))
    np.testing.assert_allclose(image, values / 65535.0, atol=1e-7)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), "NaN or infinite"),
        (np.zeros((4, 4, 4, 4)), "is not a 2-D image"),
        (np.zeros((1, 8)), "too small"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype <U1 is not an image"),
    ],
    ids=["nan", "4d", "thin", "strings"],
)
def test_bad_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=f"^scan: .*{message}"):
        load_xray(array, name="scan")


def test_bytes_and_file_objects_use_the_given_name() -> None:
    png = encode(Image.fromarray(to_uint8(reference_image())), "PNG")
    expected = to_uint8(reference_image()) / 255.0
    np.testing.assert_allclose(load_xray(io.BytesIO(png)), expected, atol=1e-6)
    np.testing.assert_allclose(load_xray(bytearray(png), name="u.png"), expected, atol=1e-6)
    with pytest.raises(ImageDecodeError, match="^upload.png: truncated PNG"):
        load_xray(io.BytesIO(png[:-20]), name="upload.png")


def test_one_pixel_limit_for_every_size_and_not_pillows() -> None:
    """Between Pillow's warning (~89 MP) and error (~179 MP) limits, past both, and below Pillow's limit but over
    MAX_PIXELS: the same one-line message naming the file, its size and the limit."""
    limit = f"over the {imageio.MAX_PIXELS / 10**6:g}-megapixel limit"
    for side in (9500, 30000, 7200):
        with pytest.raises(ImageDecodeError, match=f"^big.png: image too large: {side}x{side} pixels is {limit}$"):
            load_xray(png_header_only(side, side), name="big.png")
    assert 7200 * 7200 < Image.MAX_IMAGE_PIXELS  # so the last case is ours, not Pillow's


def test_pixel_limit_is_checked_on_the_header_before_decoding(monkeypatch, tmp_path: Path) -> None:
    """A real, valid 90-megapixel black PNG (the kind that blocked the server) is refused without decoding it."""
    path = tmp_path / "black.png"
    Image.new("L", (9400, 9400)).save(path)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels decoded before the size check"))
    with pytest.raises(ImageDecodeError, match=f"^{path}: image too large: 9400x9400 pixels"):
        load_xray(path)


def test_dicom_rows_and_columns_are_checked_before_decoding() -> None:
    ds = make_dicom(np.zeros((8, 8), np.uint16), bits_stored=12)
    ds.Rows = ds.Columns = 8000  # the header claims 64 MP; the pixel data holds 64 pixels and is never decoded
    with pytest.raises(ImageDecodeError, match="^huge.dcm: image too large: 8000x8000 pixels"):
        load_xray(dicom_bytes(ds), name="huge.dcm")


def test_pixel_limit_applies_to_every_source() -> None:
    side = int(imageio.MAX_PIXELS**0.5)
    with pytest.raises(ImageDecodeError, match=f"^x: image too large: {side + 1}x{side} pixels"):
        check_size(side, side + 1, "x")
    check_size(side, side, "x")


def test_files_over_the_size_limit_are_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(imageio, "MAX_FILE_BYTES", 2**20)
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2**20))
    with pytest.raises(ImageDecodeError, match="huge.png: file is over the 1 MiB limit"):
        load_xray(path)


@pytest.mark.parametrize(
    "head, message",
    [(b"BM" + bytes(60), "BMP files are not accepted"), (b"%PDF-1.4\n", "PDF files are not accepted"),
     (b"RIFF\0\0\0\0WEBPVP8 ", "WebP files are not accepted"), (bytes([0x00, 0x9C, 0xFE, 0x81]) * 8, "not a PNG, JPEG or DICOM")],
    ids=["bmp", "pdf", "webp", "binary"],
)
def test_other_formats_are_named(head: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=f"^f: {message}"):
        load_xray(head, name="f")


def test_png_crc_check_stops_at_iend() -> None:
    """Bytes after IEND (some writers append them) do not make a valid PNG fail."""
    png = encode(Image.fromarray(to_uint8(reference_image())), "PNG") + b"trailing junk"
    assert load_xray(png).shape == (48, 64)
    chunk = struct.pack(">I", 4) + b"tEXt" + b"a\0bc" + struct.pack(">I", zlib.crc32(b"tEXta\0bc") ^ 1)
    broken = png[:33] + chunk + png[33:]
    with pytest.raises(ImageDecodeError, match="CRC mismatch in tEXt chunk"):
        load_xray(broken)


def test_iter_image_files_survives_a_symlink_loop(tmp_path: Path) -> None:
    png = encode(Image.fromarray(to_uint8(reference_image())), "PNG")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.png").write_bytes(png)
    (tmp_path / "a" / "b" / "two.PNG").write_bytes(png)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")
    found = iter_image_files([tmp_path / "a"])
    assert found == [tmp_path / "a" / "b" / "two.PNG", tmp_path / "a" / "one.png"]
    assert iter_image_files([tmp_path / "x.png"]) == [tmp_path / "x.png"]  # files pass through, checked on load


def test_constant_array_is_black_not_nan() -> None:
    np.testing.assert_array_equal(array_to_xray(np.full((4, 4), 7, np.int32), "c"), np.zeros((4, 4), np.float32))
