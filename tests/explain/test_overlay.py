"""Overlay PNGs: the X-ray's size, grey where the heatmap is cold, coloured where it is hot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cxrscreen.data.imageio import load_xray
from cxrscreen.explain.overlay import overlay_png, overlay_rgb


def test_overlay_is_the_xray_where_cold_and_coloured_where_hot(shared_data: Path) -> None:
    path = sorted((shared_data / "covid-chestxray-dataset" / "images").glob("*.jpg"))[0]
    image = load_xray(path)
    heatmap = np.zeros((32, 32), dtype=np.float32)
    heatmap[:8, :8] = 1.0  # hot top-left corner, given at a lower resolution than the image
    rgb = overlay_rgb(image, heatmap)
    assert rgb.shape == (*image.shape, 3) and rgb.dtype == np.uint8
    h, w = image.shape
    cold = rgb[h // 2 :, w // 2 :]
    assert (cold.max(axis=2) - cold.min(axis=2)).max() <= 1  # grey: the X-ray untouched
    np.testing.assert_allclose(cold[..., 0], np.round(image[h // 2 :, w // 2 :] * 255), atol=1)
    hot = rgb[: h // 8, : w // 8].astype(int)
    assert (hot.max(axis=2) - hot.min(axis=2)).mean() > 40  # clearly coloured

    png = overlay_png(image, heatmap)
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.format == "PNG" and decoded.mode == "RGB" and decoded.size == (w, h)
        np.testing.assert_array_equal(np.asarray(decoded), rgb)
