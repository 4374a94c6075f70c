"""A corpus of good, awkward and broken inputs, generated into a folder, for every entry point to run through.

``build_corpus(folder)`` writes each case and returns :class:`Case` objects saying what a correct reader must do:
``expect="ok"`` with the image a correct decode gives (``expected_image``, float32 (H, W) in [0, 1], compared by
mean absolute error up to ``tolerance``), or ``expect="error"`` with a substring the one-line error message must
hold. ``target`` says which entry point the case is for: ``"image"`` (:func:`cxrscreen.data.imageio.load_xray`,
and so predict, the API, training's image loading) or ``"dataset"`` (:func:`cxrscreen.data.sources.load_dataset`:
manifests and folder trees; ``details`` then holds the expected counts).

Other test packages use it as ``from badinputs.corpus import build_corpus`` (``tests/`` is on ``sys.path``
through its conftest). Nothing here is committed data: every file is made by code, in the caller's folder.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Case:
    """One input and what a correct reader does with it (see the module docstring)."""

    name: str
    path: Path
    expect: str
    reason_substring: str
    target: str = "image"
    expected_image: np.ndarray | None = field(default=None, repr=False, compare=False)
    tolerance: float = 1e-6
    details: dict[str, Any] = field(default_factory=dict, compare=False)


def reference_image(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth, asymmetric test picture, float (H, W) in [0, 1]: bright top-left block on a diagonal gradient.

    Not square and not symmetric, so a transposed or rotated decode does not match it.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    image = 0.15 + 0.6 * (xx / (width - 1)) * (0.5 + 0.5 * yy / (height - 1))
    image[: height // 3, : width // 4] = 0.95
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG claiming ``width`` x ``height`` 8-bit grey pixels with almost no data (a decompression bomb's shape)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + png_chunk(b"IEND", b"")


def corrupt_png_crc(data: bytes, chunk: bytes = b"IDAT") -> bytes:
    """The PNG with the stored CRC of its first ``chunk`` flipped (its content unchanged)."""
    start = data.index(chunk) - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    crc_at = start + 8 + length
    return data[:crc_at] + bytes([data[crc_at] ^ 0xFF]) + data[crc_at + 1 :]


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attributes):
    """A single-image DX DICOM dataset (pydicom ``Dataset``) holding ``pixels`` uncompressed.

    ``pixels``: uint8/uint16/int16 (H, W), or (frames, H, W) for multi-frame; ``attributes`` are set as DICOM
    keywords (e.g. ``WindowCenter=2048``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "synthetic"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, ``DICM``, file meta)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def twelve_bit(reference: np.ndarray) -> np.ndarray:
    """``reference`` as 12-bit values in a uint16 container, spanning exactly 0 .. 4095."""
    stretched = (reference - reference.min()) / (reference.max() - reference.min())
    return np.round(stretched * 4095).astype(np.uint16)


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def image_cases(folder: Path) -> list[Case]:
    """Cases for :func:`load_xray`, written into ``folder``."""
    ref = reference_image()
    ref8 = to_uint8(ref)
    gray8 = ref8 / 255.0
    ok, error = "ok", "error"
    cases: list[Case] = []

    def add(name: str, data: bytes, expect: str, reason: str, expected=None, tolerance=1e-6) -> None:
        cases.append(Case(name, _write(folder, name, data), expect, reason, "image", expected, tolerance))

    gray_png = encode(Image.fromarray(ref8), "PNG")
    add("gray8.png", gray_png, ok, "8-bit grey PNG", gray8)
    add("gray8.jpg", encode(Image.fromarray(ref8), "JPEG", quality=95), ok, "8-bit grey JPEG", gray8, 0.02)
    add("jpeg_named.png", encode(Image.fromarray(ref8), "JPEG", quality=95), ok, "format sniffed, not taken from the name", gray8, 0.02)

    ref16 = np.round(ref * 65535).astype(np.uint16)
    add("gray16.png", encode(Image.fromarray(ref16), "PNG"), ok, "16-bit scaled by 65535, not clipped at 255", ref16 / 65535.0)

    alpha = np.full(ref.shape, 255, np.uint8)
    alpha[:, -8:] = 0  # a transparent stripe shows as black
    rgb = np.stack([ref8, np.flipud(ref8), np.fliplr(ref8)], axis=-1)
    rgba_expected = (rgb @ LUMA / 255.0) * (alpha / 255.0)
    add("rgba.png", encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"), ok, "RGBA flattened onto black", rgba_expected, 2 / 255)

    palette_image = Image.fromarray(rgb, "RGB").quantize(64)
    palette = np.array(palette_image.getpalette(), dtype=np.float64).reshape(-1, 3)
    palette_expected = palette[np.asarray(palette_image)] @ LUMA / 255.0
    add("palette.png", encode(palette_image, "PNG"), ok, "palette expanded to luminance", palette_expected, 2 / 255)

    add("cmyk.jpg", encode(Image.fromarray(ref8).convert("CMYK"), "JPEG", quality=95), ok, "CMYK JPEG", gray8, 0.04)

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored = Image.fromarray(np.rot90(ref8, 1).copy())
    add("exif_rotated.jpg", encode(stored, "JPEG", quality=95, exif=exif), ok, "EXIF orientation applied", gray8, 0.02)

    add("zero_bytes.png", b"", error, "empty file")
    add("text.png", b"patient,finding\n1,covid\n", error, "text file")
    add("truncated.png", gray_png[: len(gray_png) // 2], error, "truncated PNG")
    jpeg = encode(Image.fromarray(ref8), "JPEG", quality=95)
    add("truncated.jpg", jpeg[: len(jpeg) // 2], error, "truncated JPEG")
    add("bad_crc_idat.png", corrupt_png_crc(gray_png, b"IDAT"), error, "CRC mismatch in IDAT")
    add("bad_crc_ihdr.png", corrupt_png_crc(gray_png, b"IHDR"), error, "CRC mismatch in IHDR")
    add("bomb_30000x30000.png", png_header_only(30000, 30000), error, "too large")
    add("one_pixel.png", encode(Image.new("L", (1, 1), 128), "PNG"), error, "too small")
    frames = [Image.fromarray(np.roll(ref8, 8 * i, axis=1)) for i in range(3)]
    add("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), error, "GIF files are not accepted")
    add("animated.png", encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), error, "animated image with 3 frames")
    add("scan.tif", encode(Image.fromarray(ref8), "TIFF"), error, "TIFF files are not accepted")

    cases.extend(dicom_cases(folder, ref))
    cases.extend(filesystem_cases(folder, gray_png, gray8))
    return cases


def dicom_cases(folder: Path, ref: np.ndarray) -> list[Case]:
    """DICOM cases: grey 12-bit, MONOCHROME1, windowed, RLE, JPEG 2000, and the ones that must fail."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, RLELossless, UID

    stored = twelve_bit(ref)
    full_range = stored / 4095.0
    cases = [
        Case("mono2_12bit.dcm", _write(folder, "mono2_12bit.dcm", dicom_bytes(make_dicom(stored, bits_stored=12))),
             "ok", "12-bit in 16-bit container scaled from its real range", expected_image=full_range),
        Case("mono1.dcm", _write(folder, "mono1.dcm", dicom_bytes(make_dicom(stored, "MONOCHROME1", 12))),
             "ok", "MONOCHROME1 inverted", expected_image=1.0 - full_range),
    ]
    center, width = 1500.0, 2000.0  # LINEAR window (PS3.3 C.11.2.1.2.1): [0, 1] over center - 0.5 +- (width - 1) / 2
    windowed = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    windowed_ds = make_dicom(stored, bits_stored=12, WindowCenter=center, WindowWidth=width)
    cases.append(Case("windowed.dcm", _write(folder, "windowed.dcm", dicom_bytes(windowed_ds)), "ok",
                      "window applied, scaled by pydicom's output range", expected_image=windowed, tolerance=1e-4))
    for syntax, name in ((RLELossless, "rle.dcm"), (JPEG2000Lossless, "j2k.dcm")):
        ds = make_dicom(stored, bits_stored=12)
        ds.compress(syntax)
        cases.append(Case(name, _write(folder, name, dicom_bytes(ds)), "ok", f"{syntax.name} decoded", expected_image=full_range))

    no_pixels = make_dicom(stored, bits_stored=12)
    del no_pixels.PixelData
    cases.append(Case("no_pixels.dcm", _write(folder, "no_pixels.dcm", dicom_bytes(no_pixels)), "error", "no pixel data"))
    multi = make_dicom(np.stack([stored, stored, stored]), bits_stored=12)
    cases.append(Case("multiframe.dcm", _write(folder, "multiframe.dcm", dicom_bytes(multi)), "error", "multi-frame"))
    video = make_dicom(stored, bits_stored=12)
    video.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102")  # MPEG-4 AVC/H.264: no pydicom decoder
    video.PixelData = encapsulate([b"\0\0\0\1" + bytes(256)])
    video["PixelData"].VR = "OB"
    cases.append(Case("h264.dcm", _write(folder, "h264.dcm", dicom_bytes(video)), "error", "MPEG-4 AVC/H.264"))
    whole = dicom_bytes(make_dicom(stored, bits_stored=12))
    cases.append(Case("truncated.dcm", _write(folder, "truncated.dcm", whole[: len(whole) - 3000]), "error", "DICOM"))
    return cases


def filesystem_cases(folder: Path, png: bytes, expected: np.ndarray) -> list[Case]:
    """Paths that are not plain readable files: a directory, links, a pipe, a file without read permission."""
    cases = []
    directory = folder / "folder.png"
    directory.mkdir()
    cases.append(Case("folder.png", directory, "error", "is a directory"))
    loop = folder / "loop.png"
    loop.symlink_to(loop.name)
    cases.append(Case("loop.png", loop, "error", "symbolic links"))
    dangling = folder / "dangling.png"
    dangling.symlink_to("does-not-exist.png")
    cases.append(Case("dangling.png", dangling, "error", "file not found"))
    fifo = folder / "pipe.png"
    os.mkfifo(fifo)
    cases.append(Case("pipe.png", fifo, "error", "not a regular file"))
    unreadable = _write(folder, "unreadable.png", png)
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):
        # Root (as in CI containers) reads it anyway; the truthful expectation is a normal decode.
        cases.append(Case("unreadable.png", unreadable, "ok", "chmod 000 ignored: running as root", expected_image=expected))
    else:
        cases.append(Case("unreadable.png", unreadable, "error", "permission denied"))
    return cases


def dataset_cases(folder: Path) -> list[Case]:
    """Cases for :func:`load_dataset`: a folder tree with a symlink loop, and CSV manifests gone wrong."""
    png = encode(Image.fromarray(to_uint8(reference_image())), "PNG")
    tree = folder / "tree_with_loop"
    for label in ("COVID", "Normal", "Viral Pneumonia"):
        (tree / label).mkdir(parents=True)
        _write(tree / label, f"{label}-1.png", png)
    (tree / "COVID" / "loop").symlink_to("..")  # COVID/loop -> tree: a cycle
    cases = [Case("tree_with_loop", tree, "ok", "symlink loop: each image listed once", "dataset", details={"images": 3})]

    images = folder / "manifest_images"
    images.mkdir()
    for stem in ("a", "b", "c", "d"):
        _write(images, f"{stem}.png", png)
    manifests = {
        "missing_columns.csv": ("file,finding\nmanifest_images/a.png,covid\n".encode(), "error", "missing column(s) path, label", {}),
        "unknown_labels.csv": (
            "path,label\nmanifest_images/a.png,COVID-19\nmanifest_images/b.png,No Finding\n"
            "manifest_images/c.png,Viral Pneumonia\nmanifest_images/d.png,Martian flu\n".encode(),
            "ok", "unknown label dropped and counted", {"images": 3, "dropped": {"Martian flu": 1}},
        ),
        "relative_paths.csv": (
            "path,label\n./manifest_images/a.png,covid\nmanifest_images/../manifest_images/b.png,normal\n"
            "manifest_images/c.png,viral pneumonia\n".encode(),
            "ok", "paths relative to the CSV's folder", {"images": 3},
        ),
        "not_utf8.csv": ("path,label\nmanifest_images/a.png,covid\nmanifest_images/b.png,norm\xe4l\n".encode("latin-1"),
                         "error", "not UTF-8", {}),
    }
    for name, (data, expect, reason, details) in manifests.items():
        cases.append(Case(name, _write(folder, name, data), expect, reason, "dataset", details=details))
    return cases


def build_corpus(folder: str | os.PathLike) -> list[Case]:
    """Write every case into ``folder`` (created, should be empty) and return them: image cases, then dataset cases."""
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    return image_cases(root / "images") + dataset_cases(root / "datasets")
