"""The picture of one screened image: an RGB Secondary Capture of the X-ray with its Grad-CAM heatmap overlaid
and a banner burned in above it ("NOT FOR DIAGNOSTIC USE", the finding, its probability, the model), so that any
viewer shows what the model looked at, beside the source, in the same study."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from cxrscreen.data.imageio import to_uint8
from cxrscreen.dicom.codes import Algorithm
from cxrscreen.dicom.sr import header_of
from cxrscreen.dicom.uids import SC, instance_uid, series_uid
from cxrscreen.explain.overlay import overlay_rgb
from cxrscreen.inference.results import Prediction

SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "cxrscreen Grad-CAM (NOT FOR DIAGNOSTIC USE)"
MIN_WIDTH = 512  # narrower X-rays are enlarged so the banner's text stays legible
MAX_SIDE = 1024  # larger ones are shrunk: an overlay to look at, not to read the image from


def build_sc(source: Dataset, image: np.ndarray, heatmap: np.ndarray | None, prediction: Prediction,
             algorithm: Algorithm) -> hd.sc.SCImage:
    """The Secondary Capture of ``image`` (float32 (H, W) in [0, 1], the source as displayed) with ``heatmap``
    ((H, W) in [0, 1]; None when the guard rejected the image: no heatmap is drawn), in the source's study."""
    header = header_of(source)
    sop_uid = str(source.SOPInstanceUID)
    banner = banner_lines(prediction, algorithm)
    pixels = render(image, heatmap, banner)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid(sop_uid, algorithm.digest, SC),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=instance_uid(sop_uid, algorithm.digest, SC),
        instance_number=1,
        manufacturer="cxrscreen",
        patient_orientation=("L", "F"),  # replaced below: highdicom accepts single letters only
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.software,
    )
    # The source's orientation (compound values like "LF" included), else empty: Type 2, unknown is allowed.
    sc.PatientOrientation = header.get("PatientOrientation") or ""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"Grad-CAM of {prediction.label} by {algorithm.label}; banner burned in"[:1024]
    sc.ImageComments = "NOT FOR DIAGNOSTIC USE. " + " | ".join(banner[1:])
    # highdicom's SCImage does not reference its source: the Source Image Sequence says what it was derived from.
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = sop_uid
    sc.SourceImageSequence = DicomSequence([reference])
    # dciodvfy asks an SC of a patient for these (General Series module): Laterality only where the source
    # has one (Type 2C: present only for a paired body part), BodyPartExamined always.
    if str(header.get("Laterality", "") or "").strip():
        sc.Laterality = header.Laterality
    sc.BodyPartExamined = "CHEST"
    return sc


def banner_lines(prediction: Prediction, algorithm: Algorithm) -> list[str]:
    """The text burned into the picture, one line each."""
    if prediction.in_distribution and prediction.decision is not None:
        decision = prediction.decision
        meaning = algorithm.class_codes[decision.label].meaning
        finding = f"Finding: {meaning} ({decision.label}) p={prediction.probabilities[decision.label]:.2f}; {decision.describe()}"
    else:
        finding = "Not like the chest X-rays the model knows (OOD guard): no finding"
    return ["NOT FOR DIAGNOSTIC USE - screening aid", finding, f"Model: {algorithm.label}"]


def render(image: np.ndarray, heatmap: np.ndarray | None, lines: list[str]) -> np.ndarray:
    """uint8 (H', W', 3): the image with its heatmap, resized into [MIN_WIDTH, MAX_SIDE], under a text banner."""
    height, width = image.shape
    scale = min(max(MIN_WIDTH / width, 1.0), MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = _resized(image, size)
    picture = overlay_rgb(grey, _resized(heatmap, size)) if heatmap is not None else to_uint8(np.repeat(grey[..., None], 3, axis=2))
    font_size = max(12, size[0] // 42)
    font = ImageFont.load_default(size=font_size)
    line_height = round(font_size * 1.35)
    band = line_height * len(lines) + font_size // 2
    canvas = Image.new("RGB", (size[0], size[1] + band), (0, 0, 0))
    canvas.paste(Image.fromarray(picture, mode="RGB"), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        colour = (255, 80, 80) if i == 0 else (255, 255, 255)
        draw.text((font_size // 2, font_size // 4 + i * line_height), _fit(draw, line, font, size[0] - font_size), fill=colour, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _resized(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if values.shape[::-1] == size:
        return np.asarray(values, dtype=np.float32)
    return np.asarray(Image.fromarray(np.asarray(values, dtype=np.float32), mode="F").resize(size, Image.BILINEAR))


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, shortened with an ellipsis until it fits ``width`` pixels."""
    while len(text) > 4 and draw.textlength(text, font=font) > width:
        text = text[:-4] + "..."
    return text
