"""The batched preparation (issue 17) gives the bundled model the inputs it was trained on.

- its CLAHE is scikit-image's ``equalize_adapthist`` to the bit, and its OpenCV mask clean-up and dilation are
  scipy's ``label``/``binary_fill_holes``/``distance_transform_edt`` results to the pixel;
- a batch prepares each image as it would be prepared alone (frames, lungs found, inputs), including an image
  whose lungs are not found (COVID-102);
- ``predict_batch`` on several workers gives each file the prediction ``predict`` gives it alone, in order, with
  an unreadable file reported in its place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cxrscreen.data.clahe import equalize_adapthist
from cxrscreen.data.imageio import load_xray
from cxrscreen.data.lung_focus import dilate
from cxrscreen.data.transforms import Preprocessing, resize
from cxrscreen.inference.predictor import PredictionFailure
from cxrscreen.lungs.segmenter import clean_mask, load_segmenter
from references import scipy_clean_mask

BUNDLED_PP = Preprocessing(img_size=160, lung_mode="crop_mask", crop_margin=0.10, mask_dilation=0.04, equalize="clahe")


@pytest.fixture(scope="module")
def xrays(radiography_root: Path) -> list[Path]:
    """Twelve real X-rays over the three classes, and COVID-102, whose lungs the segmenter does not find."""
    picks = [radiography_root / "COVID" / "images" / "COVID-102.jpg"]
    for folder in ("COVID", "Normal", "Viral Pneumonia"):
        picks += sorted((radiography_root / folder / "images").glob("*.*"))[10:250:60]
    return picks


def test_clahe_is_scikit_images_to_the_bit(xrays):
    from skimage import exposure

    rng = np.random.default_rng(0)
    images = [resize(load_xray(p), size) for p in xrays for size in (160, 97)]
    images += [rng.random((70, 90), dtype=np.float32), np.full((40, 40), 0.5, dtype=np.float32)]
    for image in images:
        expected = exposure.equalize_adapthist(image, clip_limit=0.01).astype(np.float32)
        np.testing.assert_array_equal(equalize_adapthist(image, clip_limit=0.01), expected)


def test_mask_clean_up_and_dilation_are_scipys(xrays):
    segmenter = load_segmenter(backend="onnx")
    images = [load_xray(p) for p in xrays]
    masks = [resize(p, image.shape) >= 0.5 for p, image in zip(segmenter.probabilities(images), images)]
    rng = np.random.default_rng(1)
    # Blobs with holes, islands and ties near the border, as a segmenter unsure of an odd image gives.
    masks += [ndimage.gaussian_filter(rng.random((128, 150)), 3) > 0.5 for _ in range(20)]
    for mask in masks:
        cleaned = clean_mask(mask)
        np.testing.assert_array_equal(cleaned, scipy_clean_mask(mask))
        for fraction in (0.04, 0.013, 0.0625):  # 0.0625 x 128: a whole radius, where "<=" and "<" part
            radius = fraction * min(mask.shape)
            expected = ndimage.distance_transform_edt(~cleaned) <= radius if cleaned.any() else cleaned
            np.testing.assert_array_equal(dilate(cleaned, fraction), expected)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_batch_is_prepared_as_each_image_alone(xrays, backend):
    segmenter = load_segmenter(backend=backend)
    images = [load_xray(p) for p in xrays]
    batched = BUNDLED_PP.prepare_many(images, segmenter.plausible_masks)
    alone = [BUNDLED_PP.prepare(image, segmenter.plausible_mask) for image in images]
    assert [p.lungs_found for p in batched] == [p.lungs_found for p in alone]
    assert batched[0].lungs_found is False and sum(p.lungs_found for p in batched) >= len(images) - 2
    for one, other in zip(batched, alone):
        assert one.frame == other.frame
        # The segmenter's arithmetic may differ in the last bits between batch sizes; the inputs may not.
        np.testing.assert_allclose(one.input, other.input, atol=1e-5)


def test_predict_batch_on_workers_matches_predict_alone(xrays, bundled_predictors, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    sources = [str(p) for p in xrays[:5]] + [str(bad)] + [str(p) for p in xrays[5:9]]
    for predictor in bundled_predictors.values():
        previous, predictor.threads = predictor.threads, 2  # two workers, batches of up to 5
        try:
            results = predictor.predict_batch(sources)
        finally:
            predictor.threads = previous
        assert [r.source for r in results] == sources
        assert isinstance(results[5], PredictionFailure) and "notes.jpg" not in results[5].reason
        for source, result in zip(sources, results):
            if source == str(bad):
                continue
            single = predictor.predict(source)
            assert result.label == single.label and result.lungs_found == single.lungs_found
            for name, p in single.probabilities.items():
                assert result.probabilities[name] == pytest.approx(p, abs=1e-5)


def test_traced_torch_segmenter_gives_the_eager_networks_probabilities(xrays, tmp_path, monkeypatch):
    import torch

    from cxrscreen.lungs.network import LungProbabilityNet, build_network, traced_segmenter
    from cxrscreen.lungs.weights import DEFAULT_WEIGHTS

    monkeypatch.setenv("CXRSCREEN_CACHE", str(tmp_path))
    segmenter = load_segmenter(backend="torch")
    batch = segmenter.network_input([load_xray(p) for p in xrays])
    with torch.inference_mode():
        eager = LungProbabilityNet(build_network(DEFAULT_WEIGHTS)[0]).eval()(torch.from_numpy(batch)).numpy()
        for _ in range(2):  # traced now, then loaded from the cache
            traced = traced_segmenter(DEFAULT_WEIGHTS)(torch.from_numpy(batch)).numpy()
            np.testing.assert_allclose(traced, eager, atol=1e-5)
    assert list((tmp_path / "torchscript").glob("lungs-*.pt"))


def test_training_cache_prepares_batches_as_files_alone(xrays, tmp_path):
    from cxrscreen.data.cache import load_prepared
    from cxrscreen.data.imageio import to_uint8
    from cxrscreen.lungs.finder import load_lung_finder

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    files = [*xrays, bad, *xrays]  # 27 files: above the thread pool's threshold, so batches go to 2 workers
    prepared = load_prepared(files, BUNDLED_PP, cache_dir=tmp_path / "cache", progress=False, workers=2,
                             lungs=load_lung_finder())
    assert [path for path, _ in prepared.errors] == [str(bad)]
    finder = load_segmenter(backend="onnx", threads=1).plausible_mask  # the engine the training cache runs
    expected = [to_uint8(BUNDLED_PP.prepare(load_xray(p), finder).input) for p in xrays]
    assert len(prepared.images) == 2 * len(xrays)
    for got, want in zip(prepared.images, expected + expected):
        np.testing.assert_array_equal(got, want)
