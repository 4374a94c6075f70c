"""Preprocessing from the decoded X-ray to the network's input, identical in every path.

Train, evaluate, predict (torch and ONNX Runtime), explain and serve all call :func:`prepare_image` with the
:class:`Preprocessing` stored in the model's checkpoint. Input and output follow the one image convention:
float32 (H, W) in [0, 1]; the output is ``img_size`` x ``img_size``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cxrscreen.errors import ConfigError

LUNG_MODES = ("none", "crop", "mask", "crop_mask")
EQUALIZE_MODES = ("none", "hist", "clahe")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded X-ray becomes the network's input.

    - ``img_size``: square side the image is resized to (aspect ratio is not kept, as in the source collections).
    - ``lung_mode``: ``none``; ``crop`` to the lungs' bounding box (plus ``crop_margin``, a fraction of the box);
      ``mask``: everything outside the lung mask dilated by ``mask_dilation`` (fraction of the side) set to the
      image mean; ``crop_mask``: both. Needs the lung segmenter.
    - ``equalize``: per-image intensity normalisation: ``none``, ``hist`` (histogram equalisation) or ``clahe``.
    """

    img_size: int = 224
    lung_mode: str = "none"
    crop_margin: float = 0.10
    mask_dilation: float = 0.04
    equalize: str = "none"

    def __post_init__(self) -> None:
        if not 16 <= self.img_size <= 1024:
            raise ConfigError(f"--img-size must be between 16 and 1024, got {self.img_size}")
        if self.lung_mode not in LUNG_MODES:
            raise ConfigError(f"--lung-mode must be one of {', '.join(LUNG_MODES)}, got {self.lung_mode!r}")
        if self.equalize not in EQUALIZE_MODES:
            raise ConfigError(f"--equalize must be one of {', '.join(EQUALIZE_MODES)}, got {self.equalize!r}")

    @property
    def needs_lungs(self) -> bool:
        return self.lung_mode != "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def cache_key(self) -> str:
        """Identifies the cached result of :func:`prepare_image` for one file."""
        return "-".join(f"{k}={v}" for k, v in sorted(self.to_dict().items()))


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a float32 (H, W) image to ``size`` (side or (H, W))."""
    height, width = (size, size) if isinstance(size, int) else size
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(image.astype(np.float32, copy=False), mode="F")
    return np.asarray(pil.resize((width, height), Image.BILINEAR), dtype=np.float32)


def equalize(image: np.ndarray, mode: str) -> np.ndarray:
    """Per-image intensity normalisation (removes scanner-specific contrast)."""
    if mode == "none":
        return image
    from skimage import exposure

    if mode == "hist":
        return exposure.equalize_hist(image, nbins=256).astype(np.float32)
    return exposure.equalize_adapthist(np.clip(image, 0, 1), clip_limit=0.01).astype(np.float32)


def prepare_image(image: np.ndarray, pp: Preprocessing, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Decoded X-ray -> network input, float32 (img_size, img_size) in [0, 1].

    ``lung_mask`` (bool, same shape as ``image``) is required when ``pp.needs_lungs``; it is computed by
    :func:`cxrscreen.models.segmenter.segment_lungs` in :func:`prepare_with_info`.
    """
    out = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    if pp.needs_lungs:
        if lung_mask is None:
            raise ValueError("lung-focused preprocessing needs a lung mask")
        from cxrscreen.data.lungs import apply_lung_mode

        out = apply_lung_mode(out, lung_mask, pp)
    out = resize(out, pp.img_size)
    return np.clip(equalize(out, pp.equalize), 0.0, 1.0).astype(np.float32)


def prepare_with_info(source, pp: Preprocessing, name: str | None = None, segmenter=None) -> tuple[np.ndarray, bool | None]:
    """Decode ``source`` and prepare it -> (float32 (img_size, img_size) in [0, 1], lungs_found).

    ``lungs_found`` is None when ``pp`` needs no lungs; otherwise whether the segmenter found plausible lungs.
    When it did not, the typical lung fields (:func:`cxrscreen.data.lungs.typical_lung_mask`) are used instead of a
    doubtful mask, so that such images are framed like the others.
    ``segmenter``: a :class:`cxrscreen.models.segmenter.LungSegmenter` (e.g. the ONNX Runtime one); the bundled
    torch segmenter when None.
    """
    from cxrscreen.data.imageio import load_xray

    return prepare_decoded(load_xray(source, name), pp, segmenter)


def prepare_decoded(image: np.ndarray, pp: Preprocessing, segmenter=None) -> tuple[np.ndarray, bool | None]:
    """:func:`prepare_with_info` of an already decoded X-ray, float32 (H, W) in [0, 1]."""
    if not pp.needs_lungs:
        return prepare_image(image, pp), None
    from cxrscreen.models.segmenter import segment_lungs

    from cxrscreen.data.lungs import typical_lung_mask

    lungs = segment_lungs(image, segmenter)
    mask = lungs.mask if lungs.plausible else typical_lung_mask(image.shape)
    return prepare_image(image, pp, mask), lungs.plausible


def prepare_from_source(source, pp: Preprocessing, name: str | None = None) -> np.ndarray:
    """Decode ``source`` (see :func:`cxrscreen.data.imageio.load_xray`) and prepare it for the network."""
    return prepare_with_info(source, pp, name)[0]
