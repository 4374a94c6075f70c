"""DICOM decoding with pydicom: modality LUT, then VOI LUT / window, then MONOCHROME1 inversion."""

from __future__ import annotations

import io

import numpy as np

from cxrscreen.errors import ImageDecodeError


def decode_dicom(data: bytes, name: str) -> np.ndarray:
    """Decode a single-frame DICOM into the float32 (H, W) [0, 1] convention."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise ImageDecodeError(f"{name}: corrupt DICOM ({exc})") from None
    if "PixelData" not in ds:
        raise ImageDecodeError(f"{name}: DICOM file has no pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageDecodeError(f"{name}: multi-frame DICOM ({frames} frames) is not supported; export one frame")
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    if rows * cols > 100_000_000:
        raise ImageDecodeError(f"{name}: {cols}x{rows} pixels is over the 100-megapixel limit")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        label = f"{syntax.name} ({syntax})" if syntax is not None else "unknown transfer syntax"
        raise ImageDecodeError(f"{name}: cannot decode DICOM compressed as {label}: no installed decoder") from None
    except (ValueError, AttributeError, KeyError) as exc:
        raise ImageDecodeError(f"{name}: DICOM pixel data unreadable ({exc})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3 and photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        raise ImageDecodeError(f"{name}: DICOM pixel array of shape {pixels.shape} is not one 2-D image")
    if pixels.ndim == 3:
        pixels = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        return np.clip(pixels / (2**bits - 1), 0, 1).astype(np.float32)
    values = apply_modality_lut(pixels, ds)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        values = apply_voi_lut(values, ds, prefer_lut=True)
    values = np.asarray(values, dtype=np.float64)
    lo, hi = _value_range(ds, values, has_voi)
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    if scaled.shape[0] < 2 or scaled.shape[1] < 2:
        raise ImageDecodeError(f"{name}: {scaled.shape[1]}x{scaled.shape[0]} image is too small to be an X-ray")
    return scaled.astype(np.float32)


def _value_range(ds, values: np.ndarray, has_voi: bool) -> tuple[float, float]:
    """Range to scale into [0, 1]: the window's output range, else the data's own min..max.

    Using the stored bit depth would leave a 12-bit image in a 16-bit container nearly black, so without a
    window the image's actual range is used (what a viewer's auto-window does).
    """
    if has_voi and "WindowCenter" in ds and "VOILUTSequence" not in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        return center - width / 2.0, center + width / 2.0
    return float(values.min()), float(values.max())
