"""DICOM decoding with pydicom into the float32 (H, W) [0, 1] convention.

Grey images go through the standard display pipeline: the modality LUT (or rescale slope/intercept), then the VOI
LUT sequence if present, else the first window (center/width), then MONOCHROME1 is inverted (pydicom leaves it
as stored: high values dark). The result is scaled into [0, 1] from the VOI step's output range (see
:func:`voi_output_range`); without VOI data, from the image's own min..max (what a viewer's auto-window does:
scaling a 12-bit image in a 16-bit container by 65535 would leave it nearly black). Compressed pixel data is
decoded by the installed pydicom plugins (pylibjpeg: JPEG, JPEG-LS, JPEG 2000; RLE natively). Multi-frame
images, missing pixel data and transfer syntaxes no plugin decodes raise :class:`ImageDecodeError`.
"""

from __future__ import annotations

import io

import numpy as np

from cxrscreen.data.imageio import array_to_xray, check_size
from cxrscreen.errors import ImageDecodeError

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")


def decode_dicom(data: bytes, name: str) -> np.ndarray:
    """Decode a single-frame DICOM file's bytes into float32 (H, W) in [0, 1]."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types (InvalidDicomError, EOFError, struct.error, ...) on bad data
        raise ImageDecodeError(f"{name}: corrupt DICOM ({_one_line(exc)})") from None
    return decode_dataset(ds, name)


def decode_dataset(ds, name: str) -> np.ndarray:
    """A single-frame DICOM dataset already read (pydicom) -> float32 (H, W) in [0, 1]."""
    if "PixelData" not in ds:
        raise ImageDecodeError(f"{name}: DICOM file has no pixel data")
    frames = _int_attr(ds, "NumberOfFrames", 1, name)
    if frames > 1:
        raise ImageDecodeError(f"{name}: multi-frame DICOM ({frames} frames) is not supported; export one frame")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in GREY + COLOUR:
        raise ImageDecodeError(f"{name}: DICOM photometric interpretation {photometric} is not supported")
    check_size(_int_attr(ds, "Rows", 0, name), _int_attr(ds, "Columns", 0, name), name)
    pixels = _pixel_array(ds, name)
    if photometric in COLOUR:
        # pydicom returns colour as RGB; scale it by its stored bit depth.
        bits = _int_attr(ds, "BitsStored", 8, name)
        return array_to_xray(pixels.astype(np.float64) / (2**bits - 1), name)
    if pixels.ndim != 2:
        raise ImageDecodeError(f"{name}: DICOM pixel array of shape {pixels.shape} is not one 2-D image")
    try:
        scaled = display_values(pixels, ds)
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise ImageDecodeError(f"{name}: DICOM LUT or window unusable ({_one_line(exc)})") from None
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return array_to_xray(scaled.astype(np.float32), name)


def display_values(pixels: np.ndarray, ds) -> np.ndarray:
    """Stored values (H, W) -> display values in [0, 1] (MONOCHROME2 sense): modality LUT, then VOI, then scaling."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(pixels, ds)
    if has_voi_lut(ds):
        if np.issubdtype(values.dtype, np.floating) and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)  # apply_voi indexes its table with integers
        values = apply_voi(values, ds)
    elif has_window(ds):
        values = apply_windowing(values, ds)
    values = np.asarray(values, dtype=np.float64)
    lo, hi = voi_output_range(ds) if has_voi_lut(ds) or has_window(ds) else (float(values.min()), float(values.max()))
    if hi == lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def has_voi_lut(ds) -> bool:
    """True when the first VOI LUT Sequence item holds a descriptor and data (pydicom then prefers it)."""
    items = ds.get("VOILUTSequence")
    return bool(items) and "LUTDescriptor" in items[0] and "LUTData" in items[0]


def has_window(ds) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def voi_output_range(ds) -> tuple[float, float]:
    """(value shown black, value shown white) after pydicom's VOI step, as documented for pydicom 3.

    A VOI LUT's entries span 0 .. 2**n - 1 with n = ``LUTDescriptor[2]``. A window
    (:func:`pydicom.pixels.apply_windowing`) does not map into center +- width / 2: it maps into the range of
    the modality step's output, i.e. 0 .. 2**n - 1 of a Modality LUT Sequence, else the stored range
    (unsigned 0 .. 2**BitsStored - 1, signed -2**(BitsStored-1) .. 2**(BitsStored-1) - 1) passed through
    RescaleSlope / RescaleIntercept. With a negative slope black is the larger number; the order is kept.
    """
    if has_voi_lut(ds):
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return y_min, y_max


def _pixel_array(ds, name: str) -> np.ndarray:
    """``ds.pixel_array`` with decoder failures turned into one-line messages naming the transfer syntax."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    label = f"{syntax.name} ({syntax})" if syntax is not None else "an unknown transfer syntax"
    try:
        return ds.pixel_array
    except NotImplementedError:
        raise ImageDecodeError(f"{name}: cannot decode DICOM compressed as {label}: no installed decoder") from None
    except RuntimeError as exc:
        raise ImageDecodeError(f"{name}: corrupt DICOM pixel data in {label} ({_one_line(exc)})") from None
    except Exception as exc:  # pydicom and its plugins raise many types on malformed pixel data
        raise ImageDecodeError(f"{name}: DICOM pixel data unreadable ({_one_line(exc)})") from None


def _int_attr(ds, keyword: str, default: int, name: str) -> int:
    try:
        value = ds.get(keyword, default)
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise ImageDecodeError(f"{name}: DICOM {keyword} is not a number") from None


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception's message on one line (pydicom's plugin errors span several), shortened to ``limit``."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
