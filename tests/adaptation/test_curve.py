"""Learning-curve bookkeeping and the operating threshold."""

from __future__ import annotations

import numpy as np
import pytest

from cxrscreen.adaptation.curve import curve_entry
from cxrscreen.adaptation.scores import operating_threshold
from cxrscreen.metrics.classification import Interval


def test_curve_entry_averages_repeats_and_pools_their_resamples():
    first = Interval.from_values(np.array([0.70, 0.60, 0.65, 0.75]))
    second = Interval.from_values(np.array([0.80, 0.90, 0.85, 0.95]))
    drawn = [{"covid": 10, "other": 10}, {"covid": 10, "other": 6}]
    entry = curve_entry(10, drawn, [first, second])
    assert entry["size"] == 10 and entry["repeats"] == 2
    assert entry["auroc"] == pytest.approx(0.75)
    assert entry["auroc_repeats"] == [0.7, 0.8]
    pooled = np.array([0.60, 0.65, 0.75, 0.90, 0.85, 0.95])
    assert entry["auroc_ci"] == pytest.approx(list(np.percentile(pooled, [2.5, 97.5])), abs=1e-6)
    assert entry["images_per_class"] == {"covid": 10.0, "other": 8.0}


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_threshold_is_the_highest_that_reaches_the_sensitivity(target):
    rng = np.random.default_rng(0)
    score = rng.random(200)
    is_positive = rng.random(200) < 0.4
    t = operating_threshold(score, is_positive, target)
    sensitivity = lambda thr: (score[is_positive] >= thr).mean()  # noqa: E731
    assert sensitivity(t) >= target
    assert sensitivity(np.nextafter(t, 2.0)) < target
