"""Lung-focused preprocessing and the audit's lung edits, on synthetic images with exact pixel checks."""

from __future__ import annotations

import numpy as np
import pytest

from cxrscreen.data.lung_focus import apply_lung_mode, dilate, hide_lungs, keep_only_lungs, lung_box
from cxrscreen.data.imageio import load_xray
from cxrscreen.data.transforms import Preprocessing, prepare_image, resize
from cxrscreen.lungs.pairs import read_lung_mask
from cxrscreen.lungs.segmenter import load_segmenter


@pytest.fixture
def image() -> np.ndarray:
    """A 40x50 ramp (distinct values everywhere) with mean 0.5."""
    return np.linspace(0.0, 1.0, 40 * 50, dtype=np.float32).reshape(40, 50)


@pytest.fixture
def two_lungs() -> np.ndarray:
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:30, 5:15] = True
    mask[12:28, 30:45] = True
    return mask


def test_lung_box_adds_margin_and_clips(two_lungs):
    assert lung_box(two_lungs) == (10, 30, 5, 45)
    assert lung_box(two_lungs, margin=0.1) == (8, 32, 1, 49)  # 10% of 20 rows = 2, of 40 columns = 4
    assert lung_box(two_lungs, margin=0.5) == (0, 40, 0, 50)
    assert lung_box(np.zeros((4, 6), dtype=bool)) == (0, 4, 0, 6)


def test_crop_mode_cuts_the_lung_box_plus_margin(image, two_lungs):
    out = apply_lung_mode(image, two_lungs, Preprocessing(lung_mode="crop", crop_margin=0.1))
    np.testing.assert_array_equal(out, image[8:32, 1:49])


def test_mask_mode_fills_outside_the_dilated_mask_with_the_mean(image, two_lungs):
    pp = Preprocessing(lung_mode="mask", mask_dilation=0.05)  # 0.05 * 40 = 2 px
    out = apply_lung_mode(image, two_lungs, pp)
    kept = dilate(two_lungs, 0.05)
    assert kept[8, 10] and not kept[7, 10] and kept[20, 3] and not kept[20, 2]
    np.testing.assert_array_equal(out[kept], image[kept])
    np.testing.assert_allclose(out[~kept], image.mean(), atol=1e-7)
    assert out.shape == image.shape


def test_crop_mask_fills_with_the_whole_image_mean_then_crops(image, two_lungs):
    pp = Preprocessing(lung_mode="crop_mask", crop_margin=0.1, mask_dilation=0.0)
    out = apply_lung_mode(image, two_lungs, pp)
    expected = np.where(two_lungs, image, image.mean())[8:32, 1:49]
    np.testing.assert_allclose(out, expected, atol=1e-7)


def test_empty_mask_leaves_the_image_alone(image):
    empty = np.zeros_like(image, dtype=bool)
    for mode in ("crop", "mask", "crop_mask"):
        np.testing.assert_array_equal(apply_lung_mode(image, empty, Preprocessing(lung_mode=mode)), image)
    np.testing.assert_array_equal(hide_lungs(image, empty), image)


def test_hide_and_keep_only_lungs_are_complementary(image, two_lungs):
    hidden, kept = hide_lungs(image, two_lungs), keep_only_lungs(image, two_lungs)
    np.testing.assert_allclose(hidden[two_lungs], image.mean(), atol=1e-7)
    np.testing.assert_array_equal(hidden[~two_lungs], image[~two_lungs])
    np.testing.assert_array_equal(kept[two_lungs], image[two_lungs])
    np.testing.assert_allclose(kept[~two_lungs], image.mean(), atol=1e-7)


def test_mask_of_another_shape_is_refused(image):
    with pytest.raises(ValueError, match="shape"):
        hide_lungs(image, np.ones((10, 10), dtype=bool))


def test_prepare_uses_the_lungs_of_a_real_xray(shared_data):
    root = shared_data / "lung_segmentation" / "jsrt"
    path = sorted((root / "images").glob("*.jpg"))[0]
    original = load_xray(path)
    pp = Preprocessing(img_size=64, lung_mode="crop")
    prepared = pp.prepare(original, load_segmenter().plausible_mask)
    cropped, found = prepared.input, prepared.lungs_found
    assert found is True and cropped.shape == (64, 64) and cropped.dtype == np.float32
    # The frame is the box of JSRT's hand-drawn lung mask plus the margin, to 3% of the side, and the input is
    # exactly that part of the X-ray resized.
    truth = read_lung_mask(root / "masks" / f"{path.stem}.png")
    assert truth.shape == original.shape
    np.testing.assert_allclose(prepared.frame, lung_box(truth, margin=pp.crop_margin), atol=0.03 * max(original.shape))
    top, bottom, left, right = prepared.frame
    assert (bottom - top) * (right - left) < 0.9 * original.size  # a crop, not the whole image
    np.testing.assert_allclose(cropped, resize(original[top:bottom, left:right], 64), atol=1e-6)
    whole = Preprocessing(img_size=64).prepare(original)
    assert whole.lungs_found is None and whole.frame == (0, original.shape[0], 0, original.shape[1])


def test_typical_lung_fields_are_two_lungs_of_plausible_size() -> None:
    from cxrscreen.data.lung_focus import typical_lung_mask

    mask = typical_lung_mask((200, 240))
    assert 0.15 < mask.mean() < 0.40
    left, right = mask[:, :120], mask[:, 120:]
    assert left.any() and right.any() and not mask[:, 118:122].any()
    assert not mask[-20:].any(), "no lung in the bottom of the image"


def test_unfound_lungs_are_framed_like_found_ones() -> None:
    from cxrscreen.data.lung_focus import typical_lung_mask

    pp = Preprocessing(img_size=64, lung_mode="crop_mask")
    noise = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    result = pp.prepare(noise, load_segmenter().plausible_mask)
    prepared, found = result.input, result.lungs_found
    assert found is False
    expected = prepare_image(noise, pp, typical_lung_mask(noise.shape))
    np.testing.assert_allclose(prepared, expected)
    assert not np.allclose(prepared, prepare_image(noise, Preprocessing(img_size=64)))
