"""Preprocessing from the decoded X-ray to the network's input, identical in every path.

Train, evaluate, predict (torch and ONNX Runtime), explain, audit and serve all call
:meth:`Preprocessing.prepare` with the :class:`Preprocessing` stored in the model's checkpoint. It returns a
:class:`Prepared`: the network input together with the geometry that made it (the box of the original image it
shows) and whether the lungs were found, so that no caller re-derives the crop (after MONAI's invertible
transforms, which keep what they applied beside their output). Input and output follow the one image convention:
float32 (H, W) in [0, 1]; the output is ``img_size`` x ``img_size``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from cxrscreen.data.clahe import equalize_adapthist
from cxrscreen.data.defaults import DEFAULT_IMG_SIZE
from cxrscreen.data.imageio import load_xray
from cxrscreen.data.lung_focus import lung_focus, typical_lung_mask
from cxrscreen.errors import ConfigError

LUNG_MODES = ("none", "crop", "mask", "crop_mask")
EQUALIZE_MODES = ("none", "hist", "clahe")

# (top, bottom, left, right) of a box in an image, bottom/right exclusive.
Frame = tuple[int, int, int, int]
# Decoded X-ray float32 (H, W) in [0, 1] -> its lung mask bool (H, W), or None when no plausible lungs were found
# (e.g. :meth:`cxrscreen.lungs.segmenter.LungSegmenter.plausible_mask`). Passed in, so that ``data`` needs no model code.
FindLungs = Callable[[np.ndarray], "np.ndarray | None"]
# The same for many X-rays at once, one mask (or None) per image, in order (e.g.
# :meth:`cxrscreen.lungs.segmenter.LungSegmenter.plausible_masks`, which runs the network on the batch).
FindLungsBatch = Callable[[Sequence[np.ndarray]], "list[np.ndarray | None]"]


class LungFinder(Protocol):
    """A lung segmenter as preparation is handed it (it lives in :mod:`cxrscreen.lungs`, above ``data``:
    :func:`cxrscreen.lungs.finder.load_lung_finder` makes the one every caller uses): ``digest`` names its weights
    and engine (the cache keeps entries per digest) and ``load()`` returns its :data:`FindLungsBatch`, called only
    when an image is actually prepared, so that a warm cache never loads the network."""

    @property
    def digest(self) -> str: ...

    def load(self) -> FindLungsBatch: ...


@dataclass(frozen=True)
class CallableLungFinder:
    """A :class:`LungFinder` around a batch finder one already has (``digest`` must name what it finds)."""

    find: FindLungsBatch
    digest: str

    def load(self) -> FindLungsBatch:
        return self.find


@dataclass(frozen=True)
class Prepared:
    """A decoded X-ray made into the network's input, with what was done to it.

    ``input``: float32 (img_size, img_size) in [0, 1], the exact array the network scores. ``frame``: the box
    (top, bottom, left, right) of the original image that ``input`` shows, resized. ``lungs_found``: None when
    the preprocessing does not look for the lungs, else whether they were found (when not, the typical lung fields
    were used). ``original_shape``: (H, W) of the decoded X-ray.
    """

    input: np.ndarray
    frame: Frame
    lungs_found: bool | None
    original_shape: tuple[int, int]

    def to_input(self, array: np.ndarray) -> np.ndarray:
        """An array at the original's size (H, W), e.g. a lung mask, cut to :attr:`frame` and resized as the input
        was -> float32 (img_size, img_size)."""
        if array.shape != self.original_shape:
            raise ValueError(f"array shape {array.shape} differs from the original image's {self.original_shape}")
        top, bottom, left, right = self.frame
        return resize(np.asarray(array, dtype=np.float32)[top:bottom, left:right], self.input.shape)

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_input`: an array in the input's frame (any size, e.g. a Grad-CAM map) resized
        into :attr:`frame` of a float32 array of the original's size, zero outside the frame."""
        top, bottom, left, right = self.frame
        out = np.zeros(self.original_shape, dtype=np.float32)
        out[top:bottom, left:right] = resize(np.asarray(array, dtype=np.float32), (bottom - top, right - left))
        return out


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded X-ray becomes the network's input.

    - ``img_size``: square side the image is resized to (aspect ratio is not kept, as in the source collections).
    - ``lung_mode``: ``none``; ``crop`` to the lungs' bounding box (plus ``crop_margin``, a fraction of the box);
      ``mask``: everything outside the lung mask dilated by ``mask_dilation`` (fraction of the side) set to the
      image mean; ``crop_mask``: both. Needs the lung segmenter.
    - ``equalize``: per-image intensity normalisation: ``none``, ``hist`` (histogram equalisation) or ``clahe``.
    """

    img_size: int = DEFAULT_IMG_SIZE
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

    @property
    def crops_to_lungs(self) -> bool:
        """Whether the input shows only the lungs' box (``crop``, ``crop_mask``)."""
        return self.lung_mode in ("crop", "crop_mask")

    @property
    def masks_outside_lungs(self) -> bool:
        """Whether everything outside the dilated lungs is set to the image mean (``mask``, ``crop_mask``)."""
        return self.lung_mode in ("mask", "crop_mask")

    def prepare(self, image: np.ndarray, find_lungs: FindLungs | None = None) -> Prepared:
        """Decoded X-ray float32 (H, W) -> :class:`Prepared` (the network input and the frame it shows).

        ``find_lungs`` is required when :attr:`needs_lungs`. When it finds no plausible lungs, the typical lung
        fields (:func:`cxrscreen.data.lung_focus.typical_lung_mask`) are used instead of a doubtful mask, so that such
        images are framed like the others (and the frame alone does not tell the model which were hard).
        """
        image = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
        shape = (int(image.shape[0]), int(image.shape[1]))
        frame: Frame = (0, shape[0], 0, shape[1])
        lungs_found = None
        if self.needs_lungs:
            if find_lungs is None:
                raise ConfigError(f"lung_mode {self.lung_mode!r} needs a lung finder (the segmenter)")
            mask = find_lungs(image)
            lungs_found = mask is not None
            if mask is None:
                mask = typical_lung_mask(image.shape)
            image, frame = lung_focus(image, mask, self)
        out = resize(image, self.img_size)
        out = np.clip(equalize(out, self.equalize), 0.0, 1.0).astype(np.float32)
        return Prepared(out, frame, lungs_found, shape)

    def prepare_many(self, images: Sequence[np.ndarray], find_lungs: FindLungsBatch | None = None) -> list[Prepared]:
        """:meth:`prepare` for many decoded X-rays, their lungs found in one call of ``find_lungs`` (required when
        :attr:`needs_lungs`): each result is what :meth:`prepare` gives that image with the mask found for it."""
        if not self.needs_lungs:
            return [self.prepare(image) for image in images]
        if find_lungs is None:
            raise ConfigError(f"lung_mode {self.lung_mode!r} needs a lung finder (the segmenter)")
        images = [np.clip(image, 0.0, 1.0).astype(np.float32, copy=False) for image in images]
        masks = find_lungs(images) if images else []
        return [self.prepare(image, lambda _image, mask=mask: mask) for image, mask in zip(images, masks)]

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
    """Per-image intensity normalisation (removes scanner-specific contrast). ``clahe`` is scikit-image's
    ``equalize_adapthist(clip_limit=0.01)``, computed by :mod:`cxrscreen.data.clahe` (same result, 5x faster)."""
    if mode == "none":
        return image
    if mode == "hist":
        from skimage import exposure  # scikit-image takes about a second to import: only when used

        return exposure.equalize_hist(image, nbins=256).astype(np.float32)
    return equalize_adapthist(np.clip(image, 0, 1), clip_limit=0.01)


def prepare_image(image: np.ndarray, pp: Preprocessing, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """The network input of :meth:`Preprocessing.prepare` with a known ``lung_mask`` (bool, the image's shape;
    required when ``pp.needs_lungs``), float32 (img_size, img_size) in [0, 1]."""
    return pp.prepare(image, None if lung_mask is None else lambda _image: lung_mask).input


def prepare_from_source(
    source, pp: Preprocessing, name: str | None = None, find_lungs: FindLungs | None = None
) -> np.ndarray:
    """Decode ``source`` (see :func:`cxrscreen.data.imageio.load_xray`) -> the network input of
    :meth:`Preprocessing.prepare`, float32 (img_size, img_size) in [0, 1]."""
    return pp.prepare(load_xray(source, name), find_lungs).input
