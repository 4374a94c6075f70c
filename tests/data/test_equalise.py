"""Per-image intensity normalisation (``Preprocessing.equalize``) against references, not only "it changed".

The bundled model was trained with CLAHE at clip limit 0.01 (scikit-image's default kernel, 1/8 of the side) and
histogram equalisation uses 256 bins; a change of either silently changes every input the model sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import exposure

from cxrscreen.data.imageio import load_xray
from cxrscreen.data.transforms import Preprocessing, prepare_image

SIDE = 96


@pytest.fixture(scope="module")
def xray(radiography_root: Path) -> np.ndarray:
    """A real X-ray at the network's side, so that preparing it does not resize it."""
    image = prepare_image(load_xray(radiography_root / "Normal" / "images" / "Normal-1.jpg"), Preprocessing(img_size=SIDE))
    assert image.shape == (SIDE, SIDE)
    return image


def equalised(image: np.ndarray, mode: str) -> np.ndarray:
    return prepare_image(image, Preprocessing(img_size=image.shape[0], equalize=mode))


def test_histogram_equalisation_of_a_hand_computed_case() -> None:
    """Four grey levels, 64 pixels each: each level maps to the share of pixels at or below it (its CDF)."""
    levels = np.array([0.0, 85.5 / 256, 170.5 / 256, 1.0], dtype=np.float32)  # 256 bins on [0, 1]: bin centres
    image = np.repeat(levels, 64).reshape(16, 16)
    np.random.default_rng(0).shuffle(image.reshape(-1))
    out = equalised(image, "hist")
    for level, cdf in zip(levels, (0.25, 0.5, 0.75, 1.0)):
        np.testing.assert_allclose(out[image == level], cdf, atol=1e-6)


def test_histogram_equalisation_matches_scikit_image_with_256_bins(xray: np.ndarray) -> None:
    reference = exposure.equalize_hist(xray, nbins=256)
    np.testing.assert_allclose(equalised(xray, "hist"), reference, atol=1e-6)
    assert np.abs(reference - exposure.equalize_hist(xray, nbins=64)).max() > 0.01  # the bin count matters here


def test_clahe_matches_scikit_image_at_clip_limit_0_01(xray: np.ndarray) -> None:
    out = equalised(xray, "clahe")
    np.testing.assert_allclose(out, exposure.equalize_adapthist(xray, clip_limit=0.01), atol=1e-6)
    # The comparison can tell clip limits apart on this image (0.02 clips at twice as many counts per bin).
    assert np.abs(out - exposure.equalize_adapthist(xray, clip_limit=0.02)).max() > 0.02
    assert np.abs(out - xray).max() > 0.05


def test_no_equalisation_leaves_the_image_as_it_is(xray: np.ndarray) -> None:
    np.testing.assert_array_equal(equalised(xray, "none"), xray)
