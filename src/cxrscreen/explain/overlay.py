"""An X-ray with a Grad-CAM heatmap drawn over it, as PNG bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from cxrscreen.data.imageio import to_uint8
from cxrscreen.data.transforms import resize
from cxrscreen.io_utils import atomic_write


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped heatmap over a grey X-ray.

    ``image``: float32 (H, W) in [0, 1]; ``heatmap``: float (h, w) in [0, 1], resized to (H, W) if needed. The
    heatmap's weight grows with its value (``alpha`` at the maximum), so cold regions leave the X-ray readable.
    Returns uint8 (H, W, 3).
    """
    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != grey.shape:
        heat = resize(heat, grey.shape)
    heat = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    colour = colormaps[cmap](heat)[..., :3].astype(np.float32)
    weight = (alpha * np.sqrt(heat))[..., None]
    blended = (1.0 - weight) * grey[..., None] + weight * colour
    return to_uint8(blended)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> bytes:
    """PNG bytes of :func:`overlay_rgb`."""
    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(image, heatmap, alpha, cmap), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_explanation(explanation, prefix: Path, save_array: bool = False) -> list[Path]:
    """Write ``<prefix>_gradcam.png`` (the overlay) and, if asked, ``<prefix>_gradcam.npy`` (float32 heatmap)."""
    png = Path(f"{prefix}_gradcam.png")
    write_bytes(png, explanation.overlay_png)
    written = [png]
    if save_array:
        npy = Path(f"{prefix}_gradcam.npy")
        with atomic_write(npy, "wb") as fh:
            np.save(fh, explanation.heatmap.astype(np.float32))
        written.append(npy)
    return written


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
