"""The fast preparation (issue 17) gives the bundled model the very inputs it was trained on, to the bit.

On 300 real X-rays of five collections (Radiography DB COVID / Normal / Viral, Kermany, ieee8023 at their own
sizes) and on edge cases (constant images, 16 x 16 and 17 x 23 crops, masks touching the border, empty and full
masks), against independent references, not against a copy of the code:

- CLAHE is scikit-image's ``equalize_adapthist``, and the histogram clipping its ``clip_histogram``;
- the mask clean-up is ``scipy.ndimage.label`` + ``binary_fill_holes``, the plausibility area ``mask.mean()``;
- the lung crop is the image filled outside the mask dilated as ``distance_transform_edt`` measures, then cut
  to the mask's box plus the margin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cxrscreen.data.clahe import clip_histograms, equalize_adapthist, grey_bins, tile_plan
from cxrscreen.data.imageio import load_xray
from cxrscreen.data.lung_focus import apply_lung_mode, dilate, grow, typical_lung_mask
from cxrscreen.data.transforms import Preprocessing, resize
from cxrscreen.lungs.segmenter import (
    PlausibilityLimits,
    clean_mask,
    fill_holes,
    load_segmenter,
    probabilities_to_segmentation,
)
from references import scipy_clean_mask

SOURCES = (
    "COVID-19_Radiography_Dataset/COVID/images",
    "COVID-19_Radiography_Dataset/Normal/images",
    "COVID-19_Radiography_Dataset/Viral Pneumonia/images",
    "chest_xray/train/PNEUMONIA",
    "covid-chestxray-dataset/images",  # 237 to 512 px, aspect kept
)


@pytest.fixture(scope="module")
def xrays(shared_data: Path) -> list[np.ndarray]:
    """60 X-rays from each source, spread over the folder."""
    images = []
    for folder in SOURCES:
        files = sorted((shared_data / folder).glob("*.jpg"))
        images += [load_xray(path) for path in files[:: max(1, len(files) // 60)][:60]]
    assert len(images) == 300 and len({image.shape for image in images}) > 20
    return images


@pytest.fixture(scope="module")
def probabilities(xrays: list[np.ndarray]) -> list[np.ndarray]:
    segmenter = load_segmenter(backend="onnx")
    return [p for start in range(0, len(xrays), 50) for p in segmenter.probabilities(xrays[start : start + 50])]


def skimage_clahe(image: np.ndarray) -> np.ndarray:
    from skimage import exposure

    return exposure.equalize_adapthist(image, clip_limit=0.01).astype(np.float32)


def test_clahe_is_scikit_images_on_real_xrays(xrays):
    rng = np.random.default_rng(0)
    images = [resize(image, 160) for image in xrays]  # the bundled model's input
    images += [resize(image, size) for image, size in zip(xrays[::10], [(97, 131), (16, 16), (17, 23)] * 10)]
    images += [np.round(resize(image, 160) * 3) / 3 for image in xrays[::30]]  # four grey levels: clipped hard
    images += [np.full((40, 40), value, dtype=np.float32) for value in (0.0, 0.5, 1.0)]
    images += [rng.random(shape, dtype=np.float32) for shape in ((70, 90), (1, 9), (9, 3), (2, 2))]
    for image in images:
        out = equalize_adapthist(image, clip_limit=0.01)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, skimage_clahe(image))


def test_histogram_clipping_is_scikit_images(xrays):
    from skimage.exposure._adapthist import clip_histogram

    rng = np.random.default_rng(1)
    cases = []
    for image in xrays[::5]:
        for shape in ((160, 160), (17, 23)):
            plan = tile_plan(shape, 256)
            key = plan.hist_offset + grey_bins(resize(image, shape), 256)[plan.hist_source]
            hist = np.bincount(key, minlength=plan.n_tiles * 256).reshape(plan.n_tiles, 256)
            cases.append((hist, max(int(0.01 * plan.pixels), 1)))
    for _ in range(100):  # sparse histograms with tall peaks and limits from 1 to 60: many passes, large increments
        hist = rng.integers(0, 40, size=(4, 256)) * (rng.random((1, 256)) < rng.random())
        hist[:, rng.integers(0, 256, 5)] += rng.integers(0, 3000)
        cases.append((hist, int(rng.integers(1, 60))))
    for hist, limit in cases:
        expected = np.stack([clip_histogram(row.copy(), limit) for row in hist])
        np.testing.assert_array_equal(clip_histograms(hist, limit), expected)


def edge_case_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    masks = [ndimage.gaussian_filter(rng.random((128, 150)), sigma) > level for sigma in (1, 3) for level in (0.45, 0.55)]
    masks += [rng.random(shape) > 0.4 for shape in ((16, 16), (17, 23)) for _ in range(5)]
    masks += [np.zeros((20, 20), bool), np.ones((20, 20), bool), np.ones((1, 5), bool)]
    ring = np.zeros((30, 30), bool)
    ring[5:25, 5:25], ring[10:20, 10:20] = True, False  # a hole
    corner = np.zeros((30, 30), bool)
    corner[:20, :20], corner[5:10, :5] = True, False  # a notch open to the border: not a hole
    corner[-3:, -4:] = True  # a speck in the other corner
    cup = np.zeros((30, 30), bool)
    cup[5:25, 5:25], cup[10:20, 10:25] = True, False  # open to the edge of its own box, far from the border
    return masks + [ring, corner, cup]


def test_mask_clean_up_is_scipys(xrays, probabilities):
    limits = PlausibilityLimits()
    for image, probs in zip(xrays, probabilities):
        found = probabilities_to_segmentation(probs, image.shape, limits)
        np.testing.assert_array_equal(found.mask, scipy_clean_mask(resize(probs, image.shape) >= 0.5))
        assert type(found.area_fraction) is float and found.area_fraction == float(found.mask.mean())
    for mask in edge_case_masks():
        np.testing.assert_array_equal(clean_mask(mask), scipy_clean_mask(mask))
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def reference_crop(image: np.ndarray, mask: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """Fill the whole image outside the mask dilated by distance, then cut the box: what the model was trained on."""
    if not mask.any():
        return image
    if pp.masks_outside_lungs:
        radius = pp.mask_dilation * min(mask.shape)
        kept = ndimage.distance_transform_edt(~mask) <= radius if radius > 0 else mask
        image = np.where(kept, image, np.float32(image.mean()))
    if not pp.crops_to_lungs:
        return image
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad_y, pad_x = int(round(pp.crop_margin * (bottom - top))), int(round(pp.crop_margin * (right - left)))
    top, left = max(0, top - pad_y), max(0, left - pad_x)
    return image[top : bottom + pad_y, left : right + pad_x]


def test_lung_crop_is_the_filled_image_cut(xrays, probabilities):
    limits = PlausibilityLimits()
    cases = [(image, probabilities_to_segmentation(probs, image.shape, limits).mask)
             for image, probs in zip(xrays[::3], probabilities[::3])]
    cases += [(image, typical_lung_mask(image.shape)) for image in xrays[1::30]]
    rng = np.random.default_rng(3)
    cases += [(rng.random(mask.shape, dtype=np.float32), mask) for mask in edge_case_masks()]
    settings = [Preprocessing(lung_mode="crop_mask"), Preprocessing(lung_mode="mask", mask_dilation=0.0625),
                Preprocessing(lung_mode="crop", crop_margin=0.0),
                Preprocessing(lung_mode="crop_mask", crop_margin=-0.1, mask_dilation=0.013)]  # a frame inside the box
    for image, mask in cases:
        for pp in settings:
            out = apply_lung_mode(image, mask, pp)
            assert out.dtype == np.float32 and out.flags.c_contiguous
            np.testing.assert_array_equal(out, reference_crop(image, mask, pp))


def test_a_dilation_in_a_frame_is_that_part_of_the_whole(xrays, probabilities):
    mask = probabilities_to_segmentation(probabilities[0], xrays[0].shape, PlausibilityLimits()).mask
    height, width = mask.shape
    for frame in [(0, height, 0, width), (3, height - 5, 7, width - 2), (height // 2, height, 0, width // 3)]:
        top, bottom, left, right = frame
        np.testing.assert_array_equal(dilate(mask, 0.04, frame), dilate(mask, 0.04)[top:bottom, left:right])


@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5, 2.9, 5.0, 8.96, 13.44, 20.48, 81.92, 120.0])
def test_growing_keeps_the_pixels_the_distance_transform_keeps(radius, xrays, probabilities):
    """Radii of 0.04 x 12 px to 3,000 px sides, on real lung masks and the edge cases (integer radii included: a
    pixel exactly at the radius is kept)."""
    masks = [probabilities_to_segmentation(probabilities[i], xrays[i].shape, PlausibilityLimits()).mask for i in (0, 150)]
    for mask in masks + [m for m in edge_case_masks() if m.any()]:
        np.testing.assert_array_equal(grow(mask, radius), ndimage.distance_transform_edt(~mask) <= radius)


def test_a_radiograph_of_real_size_is_prepared_as_the_reference_prepares_it(xrays, probabilities):
    """2,048 px (real radiographs are 2-3k px): the lungs' mask dilated by 82 px."""
    big = np.asarray(resize(xrays[0], (2048, 2048)), dtype=np.float32)
    mask = probabilities_to_segmentation(probabilities[0], big.shape, PlausibilityLimits()).mask
    pp = Preprocessing(lung_mode="crop_mask")
    np.testing.assert_array_equal(apply_lung_mode(big, mask, pp), reference_crop(big, mask, pp))


def test_the_cached_typical_mask_is_not_shared():
    first = typical_lung_mask((224, 224))
    first[:] = False
    assert typical_lung_mask((224, 224)).any()
