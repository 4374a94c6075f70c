"""DICOM decoding on DICOMs generated here with pydicom: the display pipeline checked numerically."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from badinputs.corpus import dicom_bytes, make_dicom
from cxrscreen.data.dicom import voi_output_range
from cxrscreen.data.imageio import load_xray
from cxrscreen.errors import ImageDecodeError

# Every 12-bit value once, as a 64 x 64 image.
RAMP12 = np.arange(4096, dtype=np.uint16).reshape(64, 64)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, as a fraction of the output range."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def decode(ds) -> np.ndarray:
    return load_xray(dicom_bytes(ds), name="test.dcm")


def test_unsigned_window_maps_onto_the_full_range() -> None:
    center, width = 1024.0, 512.0
    image = decode(make_dicom(RAMP12, bits_stored=12, WindowCenter=center, WindowWidth=width))
    expected = linear_window(RAMP12.astype(np.float64), center, width)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    # Below the window black, above white, the middle of the window mid-grey.
    assert image.flat[700] == 0.0 and image.flat[1400] == 1.0
    assert abs(image.flat[1024] - 0.5) < 2e-3


def test_signed_window_after_rescale() -> None:
    """A signed image with slope/intercept (CT-like): the window is applied in rescaled units."""
    stored = (np.arange(64 * 64, dtype=np.int16).reshape(64, 64) - 2048) * 2
    center, width = 40.0, 400.0
    ds = make_dicom(stored, bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024,
                    WindowCenter=center, WindowWidth=width)
    image = decode(ds)
    expected = linear_window(stored.astype(np.float64) - 1024, center, width)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert voi_output_range(ds) == (-32768 - 1024, 32767 - 1024)


def test_monochrome1_window_is_inverted() -> None:
    center, width = 2048.0, 1024.0
    image = decode(make_dicom(RAMP12, "MONOCHROME1", 12, WindowCenter=center, WindowWidth=width))
    np.testing.assert_allclose(image, 1.0 - linear_window(RAMP12.astype(np.float64), center, width), atol=1e-6)


def test_first_of_several_windows_and_other_functions() -> None:
    ramp = RAMP12.astype(np.float64)
    several = decode(make_dicom(RAMP12, bits_stored=12, WindowCenter=[1000, 3000], WindowWidth=[400, 100]))
    np.testing.assert_allclose(several, linear_window(ramp, 1000, 400), atol=1e-6)
    exact = decode(make_dicom(RAMP12, bits_stored=12, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT"))
    np.testing.assert_allclose(exact, np.clip((ramp - 2000) / 1000 + 0.5, 0, 1), atol=1e-6)
    sigmoid = decode(make_dicom(RAMP12, bits_stored=12, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID"))
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-4 * (ramp - 2000) / 1000)), atol=1e-6)


def test_voi_lut_sequence_wins_over_window() -> None:
    lut = np.round(4095 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)  # a gamma curve
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new("LUTData", "US", lut.tolist())
    ds = make_dicom(RAMP12, bits_stored=12, WindowCenter=100, WindowWidth=10)
    ds.VOILUTSequence = Sequence([item])
    np.testing.assert_allclose(decode(ds), lut[RAMP12] / 4095.0, atol=1e-6)


def test_without_window_the_real_range_is_used() -> None:
    stored = (1000 + RAMP12 // 2).astype(np.uint16)  # 1000 .. 3047 in a 16-bit container
    image = decode(make_dicom(stored, bits_stored=16))
    np.testing.assert_allclose(image, (stored - 1000.0) / 2047.0, atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_compressed_dicoms_decode_losslessly(syntax, photometric: str) -> None:
    ds = make_dicom(RAMP12, photometric, 12)
    ds.compress(syntax)
    assert ds.file_meta.TransferSyntaxUID == syntax
    expected = RAMP12 / 4095.0
    np.testing.assert_allclose(decode(ds), expected if photometric == "MONOCHROME2" else 1 - expected, atol=1e-6)


def test_rgb_dicom_becomes_luminance() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    ds = make_dicom(rgb[..., 0], "RGB")
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = rgb.tobytes()
    np.testing.assert_allclose(decode(ds), (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"), "PALETTE COLOR is not supported"),
        (lambda ds: (setattr(ds, "WindowCenter", 100), setattr(ds, "WindowWidth", 0)), "window unusable"),
        (lambda ds: setattr(ds, "Rows", 128), "pixel data unreadable .*less than expected"),
    ],
    ids=["palette", "zero-width-window", "rows-beyond-data"],
)
def test_unusable_attributes_give_one_line_errors(change, message: str) -> None:
    ds = make_dicom(RAMP12, bits_stored=12)
    change(ds)
    with pytest.raises(ImageDecodeError, match=f"^test.dcm: .*{message}"):
        decode(ds)


def test_corrupt_compressed_data_is_named_corrupt_not_undecodable() -> None:
    ds = make_dicom(RAMP12, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"not a JPEG-LS codestream" * 4])
    ds["PixelData"].VR = "OB"
    with pytest.raises(ImageDecodeError, match="^test.dcm: corrupt DICOM pixel data in JPEG-LS Lossless") as info:
        decode(ds)
    assert "\n" not in str(info.value)


def test_garbage_after_the_dicm_marker() -> None:
    with pytest.raises(ImageDecodeError, match="^test.dcm: "):
        load_xray(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(50), name="test.dcm")
