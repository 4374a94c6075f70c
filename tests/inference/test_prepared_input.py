"""Predict and explain see the same network input, framed by one preparation step (Preprocessing.prepare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrscreen.data.imageio import load_xray
from cxrscreen.data.lung_focus import typical_lung_mask
from cxrscreen.data.transforms import Preprocessing

COVID_102 = "COVID/images/COVID-102.jpg"  # a real X-ray whose lungs the bundled segmenter does not find


def two_lungs(shape=(60, 80)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[10:40, 10:30] = True
    mask[10:40, 50:70] = True
    return mask


def test_prepared_frame_is_the_lung_crop_and_maps_both_ways():
    image = np.random.default_rng(0).random((60, 80)).astype(np.float32)
    mask = two_lungs()
    prepared = Preprocessing(img_size=32, lung_mode="crop", crop_margin=0.0).prepare(image, lambda _image: mask)
    assert prepared.frame == (10, 40, 10, 70) and prepared.lungs_found is True
    lungs_in_input = prepared.to_input(mask) >= 0.5
    assert lungs_in_input.shape == (32, 32)
    assert lungs_in_input[:, 0].all() and not lungs_in_input[:, 16].any()  # starts at the left lung; gap between
    back = prepared.to_original(np.ones((32, 32), dtype=np.float32))
    assert back.shape == image.shape and back[10:40, 10:70].all() and back.sum() == 30 * 60  # zero outside


def test_unfound_lungs_frame_the_typical_lung_fields_and_say_so():
    image = np.random.default_rng(1).random((100, 120)).astype(np.float32)
    pp = Preprocessing(img_size=32, lung_mode="crop_mask")
    prepared = pp.prepare(image, lambda _image: None)
    typical = pp.prepare(image, lambda _image: typical_lung_mask(image.shape))
    assert prepared.lungs_found is False
    assert prepared.frame == typical.frame != (0, 100, 0, 120)
    np.testing.assert_array_equal(prepared.input, typical.input)


def test_preparation_without_lungs_keeps_the_whole_image_and_asks_no_finder():
    image = np.random.default_rng(2).random((50, 70)).astype(np.float32)
    prepared = Preprocessing(img_size=16).prepare(image, lambda _image: pytest.fail("lungs looked for"))
    assert prepared.frame == (0, 50, 0, 70) and prepared.lungs_found is None


def network_inputs_of(predictor, source) -> tuple[np.ndarray, np.ndarray, object]:
    """(the input predict scored, the input Grad-CAM ran on, the explanation) for one image."""
    scored, explained = [], []
    run, run_with_maps = predictor.backend.run, predictor.backend.run_with_maps
    predictor.backend.run = lambda batch: scored.append(np.array(batch)) or run(batch)
    # Grad-CAM comes from the pass that gives the maps (explain.analytic)
    predictor.backend.run_with_maps = lambda batch: explained.append(np.array(batch)) or run_with_maps(batch)
    try:
        prediction = predictor.predict(source)
        scored_input = scored[-1][0, 0]
        explanation = predictor.explain(source)
    finally:
        del predictor.backend.run, predictor.backend.run_with_maps
    return scored_input, explained[-1][0, 0], (prediction, explanation)


@pytest.fixture(scope="module")
def bundled():
    import cxrscreen
    from cxrscreen.inference.predictor import DEFAULT_MODEL

    if not DEFAULT_MODEL.is_file():
        pytest.skip("bundled default model not trained yet")
    return cxrscreen.load_model(device="cpu", threads=1)


@pytest.mark.parametrize("which", ["lungs found", "lungs not found (real X-ray)", "lungs not found (noise)"])
def test_explain_runs_on_exactly_the_input_predict_scored(bundled, radiography_root: Path, which: str):
    if which == "lungs found":
        source = radiography_root / "COVID/images/COVID-1.jpg"
    elif which == "lungs not found (real X-ray)":
        source = radiography_root / COVID_102
    else:
        source = (np.random.default_rng(3).random((256, 256)) * 255).astype(np.uint8)
    scored, explained, (prediction, explanation) = network_inputs_of(bundled, source)
    assert prediction.lungs_found is (which == "lungs found")
    np.testing.assert_array_equal(explained, scored)
    np.testing.assert_array_equal(explanation.prepared.input, scored)
    assert explanation.target == bundled.decide(np.array([prediction.probabilities[c] for c in bundled.classes]))
    top, bottom, left, right = explanation.prepared.frame
    outside = np.ones(explanation.heatmap.shape, dtype=bool)
    outside[top:bottom, left:right] = False
    assert not explanation.heatmap[outside].any()  # the map covers only what the network saw


def test_explanation_follows_the_decision_thresholds(bundled, radiography_root: Path):
    source = radiography_root / COVID_102
    plain = bundled.predict(source)
    other = next(c for c in bundled.classes if c != plain.label)
    saved = bundled.thresholds
    bundled.thresholds = {other: 0.0}  # `other` always passes its threshold, so it is the predicted class
    try:
        assert bundled.predict(source).label == other
        assert bundled.explain(source).target == other
        assert bundled.explain(source, target=plain.label).target == plain.label
    finally:
        bundled.thresholds = saved


def test_real_xray_without_lungs_is_explained_on_the_lung_fields_not_the_whole_image(bundled, radiography_root: Path):
    path = radiography_root / COVID_102
    explanation = bundled.explain(path)
    whole = Preprocessing(img_size=bundled.img_size, equalize=bundled.meta.preprocessing.equalize).prepare(load_xray(path))
    assert explanation.prepared.lungs_found is False
    assert explanation.prepared.frame != whole.frame
    assert np.abs(explanation.prepared.input - whole.input).max() > 0.1
