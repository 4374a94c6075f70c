"""Lung masks drawn for a reader."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cxrscreen.data.imageio import to_uint8


def lung_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey X-ray (H, W) in [0, 1] with the lungs (bool (H, W)) tinted green and outlined: uint8 RGB (H, W, 3)."""
    grey = np.repeat(image[..., None], 3, axis=2)
    tint = np.array([0.1, 0.9, 0.3], dtype=np.float32)
    out = np.where(mask[..., None], 0.65 * grey + 0.35 * tint, grey)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 200))
    out[edge] = tint
    return to_uint8(out)
