"""ECE, Brier score, temperature scaling and reliability bins on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from cxrscreen.metrics.calibration import (
    MIN_CALIBRATION_IMAGES,
    TEMPERATURE_RANGE,
    brier_score,
    choose_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
    rescale_temperature,
)


def test_ece_hand_computed():
    # Two images at confidence 0.9 (one right, one wrong) and two at 0.6 (both right):
    # bin 0.9: |0.5 - 0.9| * 2/4, bin 0.6: |1.0 - 0.6| * 2/4 -> 0.2 + 0.2
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    diagram = reliability_diagram(probs, labels, n_bins=15)
    assert diagram.counts.sum() == 4 and (diagram.counts > 0).sum() == 2
    assert np.nanmax(diagram.accuracy) == 1.0
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_ece_of_calibrated_sampling_is_small():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(20000, 3))
    probs = softmax(logits, axis=1)
    labels = np.array([rng.choice(3, p=p) for p in probs])  # labels drawn from the probabilities: calibrated
    assert expected_calibration_error(probs, labels) < 0.02
    overconfident = softmax(logits * 3, axis=1)
    assert expected_calibration_error(overconfident, labels) > 0.1


def test_brier_hand_computed():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    labels = np.array([0, 1])
    # image 1: 0; image 2: 0.25 + 0.25 + 0 -> mean 0.25
    assert brier_score(probs, labels) == pytest.approx(0.25)
    assert brier_score(np.array([[0.0, 1.0]]), np.array([0])) == pytest.approx(2.0)


def test_fit_temperature_recovers_the_scaling():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(5000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits, axis=1)])
    assert fit_temperature(logits * 3.0, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.1)
    fitted = fit_temperature(logits * 3.0, labels)
    assert negative_log_likelihood(logits * 3.0, labels, fitted) < negative_log_likelihood(logits * 3.0, labels, 1.0)


def test_fit_temperature_stays_in_range_when_everything_is_right():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    temperature = fit_temperature(logits, np.array([0, 1]))
    assert 0.25 <= temperature <= 0.3  # the NLL keeps falling as T shrinks: the lower bound holds it
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 1.0


def test_rescale_temperature_recovers_unscaled_probabilities():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.3, -4.0]])
    at_two = softmax(logits / 2.0, axis=1)
    np.testing.assert_allclose(rescale_temperature(at_two, 2.0, 1.0), softmax(logits, axis=1), atol=1e-12)


def test_ece_hand_computed_over_three_bins_and_classes():
    # Top probabilities 0.5 (bin (0.467, 0.533]), 0.7 and 0.7 (bin (0.667, 0.733]), 0.95 (bin (0.933, 1]);
    # right: image 1 yes, 2 yes, 3 no, 4 yes.
    # ECE = 1/4 |1 - 0.5| + 2/4 |0.5 - 0.7| + 1/4 |1 - 0.95| = 0.125 + 0.1 + 0.0125 = 0.2375
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2], [0.7, 0.2, 0.1], [0.02, 0.03, 0.95]])
    labels = np.array([0, 1, 2, 2])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2375)
    # Brier per image: 0.25+0.09+0.04=0.38; 0.01+0.09+0.04=0.14; 0.49+0.04+0.81=1.34; 0.0004+0.0009+0.0025=0.0038
    assert brier_score(probs, labels) == pytest.approx((0.38 + 0.14 + 1.34 + 0.0038) / 4)


def test_fit_temperature_finds_the_known_optimum_inside_the_range():
    # Every image has logits (a, 0); a share p of them is class 0. The NLL is minimal where
    # sigmoid(a / T) = p, i.e. T = a / logit(p) = 3 / ln 4 = 2.164 for a = 3, p = 0.8.
    logits = np.tile([3.0, 0.0], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    expected = 3.0 / np.log(4.0)
    assert TEMPERATURE_RANGE[0] < expected < TEMPERATURE_RANGE[1]
    assert fit_temperature(logits, labels) == pytest.approx(expected, rel=1e-3)


def test_choose_temperature_keeps_one_below_the_minimum_number_of_images():
    # 9 validation images, all right with logit margins of 0.5: the search runs to its lower bound; with
    # 9 images that says nothing, so T stays 1 and the reason is given.
    logits = np.tile([0.5, 0.0], (9, 1))
    labels = np.zeros(9, dtype=int)
    choice = choose_temperature(logits, labels)
    assert choice.temperature == 1.0 and choice.fitted is None and choice.images == 9
    assert "9 validation image(s) are too few" in choice.note and str(MIN_CALIBRATION_IMAGES) in choice.note


def test_choose_temperature_keeps_one_when_the_fit_stops_at_a_bound():
    # 40 images at logits (0.2, 0), half of each class: the NLL keeps falling as T grows (softer is better), so
    # the search stops at the upper bound.
    logits = np.tile([0.2, 0.0], (40, 1))
    labels = np.array([0, 1] * 20)
    choice = choose_temperature(logits, labels)
    assert choice.fitted == pytest.approx(TEMPERATURE_RANGE[1], rel=1e-3)
    assert choice.temperature == 1.0 and "bound" in choice.note


def test_choose_temperature_uses_a_fit_inside_the_range():
    logits = np.tile([3.0, 0.0], (MIN_CALIBRATION_IMAGES, 1))
    labels = np.array([0, 0, 0, 0, 1] * (MIN_CALIBRATION_IMAGES // 5))
    choice = choose_temperature(logits, labels)
    assert choice.temperature == pytest.approx(3.0 / np.log(4.0), rel=1e-3)
    assert choice.note is None and choice.images == MIN_CALIBRATION_IMAGES
    assert choice.to_dict()["temperature"] == choice.temperature
