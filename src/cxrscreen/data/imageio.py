"""Decode any accepted X-ray file into cxrscreen's one image convention.

The convention, used from decode to model: a ``numpy.float32`` array of shape (H, W), values in [0, 1],
0 = black (air outside the body is dark), 1 = white (bone). Every reader converts to it here, once.

Accepted: PNG (8/16-bit; grey, RGB, RGBA, palette), JPEG (grey, RGB, CMYK; EXIF orientation applied), DICOM
(single frame; see :mod:`cxrscreen.data.dicom`). Colour becomes luminance (ITU-R 601 weights, as Pillow's
``convert("L")``); transparency is flattened onto black. 16-bit PNGs are scaled by their bit depth (65535 = white),
never clipped at 255. Anything else (other formats, empty, truncated or corrupt files, PNG CRC mismatches,
animations, images under 2 px or over ``MAX_PIXELS`` (50 megapixels), files over 512 MiB, directories, devices)
raises :class:`ImageDecodeError` whose one-line message starts with the source's name and says why. The pixel limit
is checked on the header (PNG/JPEG dimensions, DICOM Rows/Columns) before any pixel is decoded, and it is the
only one: Pillow's own decompression-bomb limit (89.5 megapixels) is not consulted.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin

from cxrscreen.data.defaults import IMAGE_SUFFIXES
from cxrscreen.errors import ImageDecodeError

# The largest detectors make ~20-megapixel radiographs; decoding and preparing a 90-megapixel image takes half a
# minute of CPU, so anything past this is refused from its header.
MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 512 * 1024 * 1024
MIN_SIDE = 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow's plugin openers read only the header, and (unlike ``Image.open``) apply no decompression-bomb check of
# their own, so MAX_PIXELS is the one limit and its message the one the user sees.
PILLOW_OPENERS = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.jpeg_factory}
# What Pillow's openers raise on a header they cannot parse (``Image.open`` turns these into UnidentifiedImageError).
HEADER_ERRORS = (SyntaxError, IndexError, TypeError, struct.error)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The convention (float32 [0, 1]) -> uint8 [0, 255], rounded: how prepared images are stored (4x smaller) and
    written as PNG. The one float -> uint8 conversion; :func:`to_float` is its inverse."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] (a stored prepared image, any shape) -> the convention, float32 [0, 1]. The one uint8 ->
    float conversion: a torch tensor is converted where it lies (training sends uint8 batches to the device, 4x
    less to copy), to the same float32 values."""
    if not isinstance(image, np.ndarray) and hasattr(image, "float"):  # a torch tensor (data imports no torch)
        return image.float().div_(255.0)
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


# Formats recognised only to say clearly that they are not accepted.
FOREIGN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "gzip"),
)

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image, np.ndarray]


def is_dicom_bytes(head: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def sniff_format(head: bytes) -> str | None:
    """Format of a file from its first bytes: ``png``, ``jpeg``, ``dicom`` or None."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if is_dicom_bytes(head):
        return "dicom"
    return None


def load_xray(source: ImageSource, name: str | None = None) -> np.ndarray:
    """Decode ``source`` (path, bytes, binary file object, PIL image or array) into float32 (H, W) in [0, 1].

    ``name`` is used in error messages for sources that have no path (and replaces the path when given).
    """
    if isinstance(source, np.ndarray):
        return array_to_xray(source, name or "<array>")
    if isinstance(source, Image.Image):
        return pil_to_xray(source, name or "<image>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(source), name or "<upload>")
    if hasattr(source, "read"):
        label = name or str(getattr(source, "name", "<upload>"))
        return decode_bytes(_read_limited(source, label), label)
    path = Path(source)
    label = name or str(path)
    return decode_bytes(read_image_file(path, label), label)


def read_image_file(path: Path, name: str) -> bytes:
    """Bytes of a regular file, refusing directories, devices, pipes and files over ``MAX_FILE_BYTES``."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageDecodeError(f"{name}: is a directory, not an image")
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError(f"{name}: is not a regular file")
        with open(path, "rb") as fh:
            return _read_limited(fh, name)
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: file not found") from None
    except PermissionError:
        raise ImageDecodeError(f"{name}: permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _read_limited(fh: BinaryIO, name: str) -> bytes:
    data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ImageDecodeError(f"{name}: file is over the {MAX_FILE_BYTES // 2**20} MiB limit")
    return data


def decode_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode the bytes of a PNG, JPEG or DICOM file (format sniffed from the content, not the name)."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    kind = sniff_format(data[:132])
    if kind == "dicom":
        from cxrscreen.data.dicom import decode_dicom  # pydicom loads only for DICOM input (start-up time)

        return decode_dicom(data, name)
    if kind is None:
        raise ImageDecodeError(f"{name}: {describe_foreign(data[:512])}; accepted: PNG, JPEG, DICOM")
    if kind == "png":
        check_png_crcs(data, name)
    return pil_to_xray(_open_with_pillow(data, kind, name), name)


def describe_foreign(head: bytes) -> str:
    """What a file that is not PNG/JPEG/DICOM appears to be, for the error message."""
    for signature, label in FOREIGN_SIGNATURES:
        if head.startswith(signature):
            return f"{label} files are not accepted"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP files are not accepted"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a PNG, JPEG or DICOM file"
    return "is a text file, not an image"


def check_png_crcs(data: bytes, name: str) -> None:
    """Verify every chunk's CRC up to IEND (Pillow does not check the image data's), so corruption is not decoded."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, chunk_type = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ImageDecodeError(f"{name}: truncated PNG ({chunk_type.decode('latin-1')} chunk cut short)")
        (stored,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[pos + 4 : end]) != stored:
            raise ImageDecodeError(f"{name}: corrupt PNG (CRC mismatch in {chunk_type.decode('latin-1')} chunk)")
        if chunk_type == b"IEND":
            return
        pos = end + 4
    raise ImageDecodeError(f"{name}: truncated PNG (no IEND chunk)")


def _open_with_pillow(data: bytes, kind: str, name: str) -> Image.Image:
    """Open a PNG/JPEG with Pillow, check its header's size against ``MAX_PIXELS``, then decode it fully."""
    label = kind.upper()
    try:
        try:
            image = PILLOW_OPENERS[kind](io.BytesIO(data))
        except HEADER_ERRORS:
            raise ImageDecodeError(f"{name}: not a readable {label} image") from None
        check_size(image.height, image.width, name)
        if getattr(image, "n_frames", 1) > 1:
            raise ImageDecodeError(f"{name}: animated image with {image.n_frames} frames is not an X-ray")
        image.load()
        return ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types (OSError, SyntaxError, ValueError, ...) on bad data
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"{name}: corrupt or truncated {label} ({reason})") from None


def check_size(height: int, width: int, name: str) -> None:
    """Refuse images under ``MIN_SIDE`` pixels on a side or over ``MAX_PIXELS`` in all (from the header: call it
    before decoding)."""
    if height * width > MAX_PIXELS:
        raise ImageDecodeError(
            f"{name}: image too large: {width}x{height} pixels is over the {MAX_PIXELS / 10**6:g}-megapixel limit"
        )
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ImageDecodeError(f"{name}: {width}x{height} image is too small to be an X-ray")


def pil_to_xray(image: Image.Image, name: str) -> np.ndarray:
    """Convert a decoded PIL image to the convention, scaling by its real bit depth (16-bit is not clipped at 255)."""
    check_size(image.height, image.width, name)
    if image.mode.startswith("I;16"):
        return array_to_xray(np.asarray(image).astype(np.uint16), name)
    if image.mode == "I":
        values = np.asarray(image)
        # Pillow widens 16-bit data to 32-bit "I"; other ranges are scaled from their own min..max.
        if values.min() >= 0 and values.max() <= np.iinfo(np.uint16).max:
            values = values.astype(np.uint16)
        return array_to_xray(values, name)
    if image.mode == "F":
        return array_to_xray(np.asarray(image), name)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Flatten transparency onto black, as a viewer shows an X-ray.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def array_to_xray(array: np.ndarray, name: str) -> np.ndarray:
    """Convert an array (H, W), (H, W, 1|3|4) or (1, H, W) to the convention.

    Scaling: bool as 0/1; uint8 by 255; uint16 by 65535; other integers and floats outside [0, 1] from their own
    min..max (a constant image becomes black). Colour becomes luminance; an alpha channel darkens towards black.
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        unit = _to_unit_range(arr, name)
        luminance = unit[..., :3] @ np.array([0.299, 0.587, 0.114])
        gray = luminance * unit[..., 3] if arr.shape[-1] == 4 else luminance
    elif arr.ndim == 2:
        gray = _to_unit_range(arr, name)
    else:
        raise ImageDecodeError(f"{name}: array of shape {arr.shape} is not a 2-D image")
    check_size(gray.shape[0], gray.shape[1], name)
    return np.ascontiguousarray(np.clip(gray, 0.0, 1.0), dtype=np.float32)


def _to_unit_range(arr: np.ndarray, name: str) -> np.ndarray:
    """float64 copy of ``arr`` in [0, 1], scaled by dtype (see :func:`array_to_xray`)."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if arr.dtype in (np.uint8, np.uint16):
        return arr.astype(np.float64) / np.iinfo(arr.dtype).max
    if arr.dtype.kind not in "uif":
        raise ImageDecodeError(f"{name}: array of dtype {arr.dtype} is not an image")
    values = arr.astype(np.float64)
    if values.size and not np.isfinite(values).all():
        raise ImageDecodeError(f"{name}: image holds NaN or infinite values")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return values
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


@dataclass(frozen=True)
class ImageFileListing:
    """What :func:`list_image_files` found: the ``files`` to read, and per folder given how many of the files
    under it were ``skipped`` as not PNG, JPEG or DICOM (folders that skipped none are left out)."""

    files: list[Path]
    skipped: dict[Path, int]


def looks_like_image_file(path: Path) -> bool:
    """Whether a file found in a folder is one to read: a PNG/JPEG/DICOM suffix, or else PNG, JPEG or DICOM content
    (PACS exports name files like ``IM000001``). An unreadable file counts, so that loading it says why."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.name.upper() == "DICOMDIR":  # a DICOM folder's index: it has the DICM preamble but no image
        return False
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(132)) is not None
    except OSError:
        return True


def list_image_files(paths: list[str | os.PathLike]) -> ImageFileListing:
    """Expand files and folders (recursed, sorted) into the image files cxrscreen accepts.

    Files named directly pass through (checked on load). Symbolic links to folders are not followed inside a
    folder, so a link loop cannot recurse forever.
    """
    files: list[Path] = []
    skipped: dict[Path, int] = {}
    for entry in paths:
        path = Path(entry)
        if path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES:
            found = sorted(p for p in path.rglob("*") if p.is_file())
            images = [p for p in found if looks_like_image_file(p)]
            files.extend(images)
            if len(images) < len(found):
                skipped[path] = len(found) - len(images)
        else:
            files.append(path)
    return ImageFileListing(files, skipped)


def iter_image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The files of :func:`list_image_files`, for callers that need not report what was skipped."""
    return list_image_files(paths).files
