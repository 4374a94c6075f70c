"""The source probe on synthetic features whose answer is known: separable sources vs features without them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cxrscreen.errors import ConfigError
from cxrscreen.evaluation.probe import source_probe


def sources_of(counts: dict[str, int]) -> np.ndarray:
    return np.array([name for name, n in counts.items() for _ in range(n)])


def test_separable_sources_are_found():
    rng = np.random.default_rng(0)
    sources = sources_of({"hospital_a": 60, "hospital_b": 40})
    features = rng.normal(size=(100, 16))
    features[sources == "hospital_b", 3] += 6.0  # one feature dimension carries the source
    result = source_probe(features, sources)
    assert result.accuracy > 0.95
    assert result.majority_rate == pytest.approx(0.6)
    assert result.encodes_source
    assert result.sources == {"hospital_a": 60, "hospital_b": 40}


def test_features_without_the_source_stay_near_the_majority_rate():
    rng = np.random.default_rng(1)
    sources = sources_of({"a": 70, "b": 50, "c": 40})
    result = source_probe(rng.normal(size=(160, 16)), sources)
    assert result.majority_rate == pytest.approx(70 / 160)
    assert result.accuracy < result.majority_rate + 0.12
    assert abs(result.balanced_accuracy - 1 / 3) < 0.15
    assert not result.encodes_source


def test_the_probe_is_scored_out_of_fold():
    # 200 random features for 60 images: any linear probe fits its own training images perfectly, so only
    # images it did not train on show that the features hold no source.
    rng = np.random.default_rng(4)
    sources = sources_of({"a": 30, "b": 30})
    features = rng.normal(size=(60, 200))
    assert LogisticRegression(max_iter=2000).fit(features, sources).score(features, sources) == 1.0
    result = source_probe(features, sources)
    assert result.accuracy < 0.75 and not result.encodes_source


def test_small_sources_are_left_out_and_counted():
    rng = np.random.default_rng(2)
    sources = sources_of({"a": 20, "b": 20, "tiny": 3})
    result = source_probe(rng.normal(size=(43, 4)), sources, folds=5)
    assert result.left_out == {"tiny": 3}
    assert result.n_images == 40


def test_one_source_is_refused():
    with pytest.raises(ConfigError, match="at least two sources"):
        source_probe(np.zeros((10, 3)), ["a"] * 10)
