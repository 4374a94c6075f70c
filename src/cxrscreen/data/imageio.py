"""Decode any accepted X-ray file into cxrscreen's one image convention.

The convention, used from decode to model: a ``numpy.float32`` array of shape (H, W), values in [0, 1],
0 = black (air outside the body is dark), 1 = white (bone). Every reader converts to it here, once.

Accepted: PNG (8/16-bit; grey, RGB, RGBA, palette), JPEG (grey, RGB, CMYK), DICOM (single frame; modality LUT,
VOI LUT or window, MONOCHROME1 inverted). Anything else raises :class:`ImageDecodeError` naming the source and
the cause.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrscreen.errors import ImageDecodeError

MAX_PIXELS = 100_000_000
PIL_FORMATS = ("PNG", "JPEG")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})

ImageSource = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]


def is_dicom_bytes(head: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def sniff_format(head: bytes) -> str | None:
    """Format of a file from its first bytes: ``png``, ``jpeg``, ``dicom`` or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if is_dicom_bytes(head):
        return "dicom"
    return None


def load_xray(source: ImageSource, name: str | None = None) -> np.ndarray:
    """Decode ``source`` (path, bytes, PIL image or array) into a float32 (H, W) array in [0, 1].

    ``name`` is used in error messages for sources that have no path.
    """
    if isinstance(source, np.ndarray):
        return array_to_xray(source, name or "<array>")
    if isinstance(source, Image.Image):
        return pil_to_xray(source, name or "<image>")
    if isinstance(source, (bytes, bytearray)):
        return decode_bytes(bytes(source), name or "<upload>")
    path = Path(source)
    label = name or str(path)
    if path.is_dir():
        raise ImageDecodeError(f"{label}: is a directory, not an image")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: file not found") from None
    except PermissionError:
        raise ImageDecodeError(f"{label}: permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"{label}: cannot read ({exc.strerror or exc})") from None
    return decode_bytes(data, label)


def decode_bytes(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    kind = sniff_format(data[:132])
    if kind == "dicom":
        from cxrscreen.data.dicom import decode_dicom

        return decode_dicom(data, name)
    if kind is None:
        raise ImageDecodeError(f"{name}: not a PNG, JPEG or DICOM file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            if image.width * image.height > MAX_PIXELS:
                raise ImageDecodeError(f"{name}: {image.width}x{image.height} pixels is over the 100-megapixel limit")
            if getattr(image, "n_frames", 1) > 1:
                raise ImageDecodeError(f"{name}: animated image with {image.n_frames} frames is not an X-ray")
            image.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: image too large (decompression bomb check: {exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not a readable {kind.upper()} image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated {kind.upper()} ({exc})") from None
    return pil_to_xray(ImageOps.exif_transpose(image), name)


def pil_to_xray(image: Image.Image, name: str) -> np.ndarray:
    """Convert a decoded PIL image, scaling by its real bit depth (16-bit is not clipped at 255)."""
    if image.width < 2 or image.height < 2:
        raise ImageDecodeError(f"{name}: {image.width}x{image.height} image is too small to be an X-ray")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return array_to_xray(np.asarray(image, dtype=np.uint16), name)
    if image.mode in ("I", "F"):
        return array_to_xray(np.asarray(image), name)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        # Flatten transparency onto black, as a viewer shows an X-ray.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def array_to_xray(array: np.ndarray, name: str) -> np.ndarray:
    """Convert an array (H, W), (H, W, 3|4) or (1, H, W) to the convention, scaling by dtype."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
        arr = (arr[..., :3].astype(np.float64) @ weights).astype(arr.dtype if arr.dtype.kind == "f" else np.float64)
        if array.dtype.kind in "ui":
            arr = arr / np.iinfo(array.dtype).max
    elif arr.ndim != 2:
        raise ImageDecodeError(f"{name}: array of shape {arr.shape} is not a 2-D image")
    elif arr.dtype.kind in "ui" and arr.dtype != np.bool_:
        arr = arr.astype(np.float64) / np.iinfo(arr.dtype).max
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageDecodeError(f"{name}: {arr.shape[1]}x{arr.shape[0]} image is too small to be an X-ray")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ImageDecodeError(f"{name}: image holds NaN or infinite values")
    if arr.min() < 0.0 or arr.max() > 1.0:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.ascontiguousarray(arr, dtype=np.float32)


def iter_image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursed, sorted) into the image files cxrscreen accepts."""
    out: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES:
            out.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            out.append(path)
    return out
