"""ECE, Brier score, temperature scaling and reliability bins on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from cxrscreen.evaluation.calibration import (
    brier_score,
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
