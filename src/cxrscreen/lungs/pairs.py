"""Image/mask pairs of the published lung collections (Montgomery, Shenzhen, JSRT), for training and scoring the
lung segmenter: ``images/<stem>.jpg`` + ``masks/<stem>.png``; a mask pixel is lung when it is 255 (binary masks) or
150/200 (JSRT's right/left lung; 250 there is the heart)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from cxrscreen.data.imageio import load_xray
from cxrscreen.data.transforms import resize
from cxrscreen.errors import DatasetLayoutError, ImageDecodeError
from cxrscreen.lungs.segmenter import LUNG_MASK_VALUES


def read_lung_mask(path: str | os.PathLike) -> np.ndarray:
    """A published lung mask PNG -> bool (H, W): 255 (binary masks) or 150/200 (JSRT lungs) are lung."""
    try:
        with Image.open(path) as image:
            values = np.asarray(image.convert("L"))
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: not a readable mask ({exc})") from None
    return np.isin(values, LUNG_MASK_VALUES)


def segmentation_pairs(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a folder with ``images/<stem>.*`` and ``masks/<stem>.png``, sorted by stem."""
    root = Path(root)
    masks = {p.stem: p for p in (root / "masks").glob("*.png")}
    pairs = [(p, masks[p.stem]) for p in sorted((root / "images").iterdir()) if p.stem in masks] if masks else []
    if not pairs:
        raise DatasetLayoutError(f"{root}: no images/<stem>.jpg + masks/<stem>.png pairs found")
    return pairs


def load_pairs(pairs: Sequence[tuple[Path, Path]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, S, S) in [0, 1] and masks float32 (N, S, S) in {0, 1} at side ``size``."""
    images = np.stack([resize(load_xray(image), size) for image, _ in pairs])
    masks = np.stack([resize(read_lung_mask(mask).astype(np.float32), size) >= 0.5 for _, mask in pairs])
    return images.astype(np.float32), masks.astype(np.float32)
