"""The lung segmenter's weight file: where the bundled one is, its format name and the architecture it describes.

No torch here: the network that reads these (:mod:`cxrscreen.lungs.network`) and the ONNX Runtime path that does
not need it (:mod:`cxrscreen.lungs.segmenter`) both ask this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Shipped beside the classifier's weights (the package data of cxrscreen.models).
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights" / "lung_unet.pt"
FILE_FORMAT = "cxrscreen-lung-segmenter"
# The key of the file's ``info`` (JSON) in an ONNX export's metadata.
ONNX_META_KEY = "cxrscreen_lung_segmenter"
IMG_SIZES = (128, 160, 192, 256)


@dataclass(frozen=True)
class SegmenterArch:
    """Architecture of the MONAI ``UNet`` and the square input side it was trained at."""

    img_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmenterArch":
        return cls(
            img_size=int(data["img_size"]),
            channels=tuple(data["channels"]),
            strides=tuple(data["strides"]),
            num_res_units=int(data["num_res_units"]),
        )
