"""Metrics and bootstrap intervals against hand-computed cases and scikit-learn."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from cxrscreen.metrics import classification
from cxrscreen.metrics.classification import (
    Interval,
    binary_metrics,
    bootstrap_weights,
    classification_report,
    difference,
    multiclass_metrics,
    one_vs_rest,
    point_metrics,
    weighted_auroc,
)
from cxrscreen.evaluation.tables import format_interval, format_table
from cxrscreen.errors import ConfigError

CLASSES = ["covid", "normal", "viral"]


def probs_predicting(pred: list[int], n_classes: int = 3) -> np.ndarray:
    """Probabilities whose argmax is ``pred``."""
    probs = np.full((len(pred), n_classes), 0.1)
    probs[np.arange(len(pred)), pred] = 0.8
    return probs


def test_hand_computed_confusion_rates():
    # true:  c c c c n n n v v v
    # pred:  c c c n n n c v v n
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = [0, 0, 0, 1, 1, 1, 0, 2, 2, 1]
    m = multiclass_metrics(y_true, probs_predicting(y_pred), CLASSES, n_resamples=0)
    assert m.confusion.tolist() == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert m.accuracy.value == pytest.approx(7 / 10)
    covid = m.per_class["covid"]
    # covid: tp 3, fn 1, fp 1, tn 5
    assert covid["sensitivity"].value == pytest.approx(3 / 4)
    assert covid["specificity"].value == pytest.approx(5 / 6)
    assert covid["ppv"].value == pytest.approx(3 / 4)
    assert covid["npv"].value == pytest.approx(5 / 6)
    assert covid["f1"].value == pytest.approx(6 / 8)
    normal = m.per_class["normal"]
    # normal: tp 2, fn 1, fp 2, tn 5
    assert normal["sensitivity"].value == pytest.approx(2 / 3)
    assert normal["ppv"].value == pytest.approx(2 / 4)
    assert normal["specificity"].value == pytest.approx(5 / 7)
    assert m.balanced_accuracy.value == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m.macro_f1.value == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m.support == {"covid": 4, "normal": 3, "viral": 3}
    assert np.isnan(m.accuracy.low)  # no resamples, no interval


def test_auroc_hand_computed_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.5=0.5 -> 1/2, 0.5>0.1) -> 3.5 / 4
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    positive = np.array([True, True, False, False])
    assert weighted_auroc(scores, positive, np.ones((1, 4)))[0] == pytest.approx(3.5 / 4)
    # weight 2 on the tied negative: pairs 2 + 2*2 tied... = (0.9: 3 correct) + (0.5: 1 + 2*0.5) = 5 of 6
    assert weighted_auroc(scores, positive, np.array([[1, 1, 2, 1]]))[0] == pytest.approx(5 / 6)
    assert np.isnan(weighted_auroc(scores, np.zeros(4, bool), np.ones((1, 4)))[0])


def test_matches_sklearn_on_random_data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 500)
    logits = np.round(rng.normal(size=(500, 3)) + 1.2 * np.eye(3)[y], 1)  # rounding makes ties
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = multiclass_metrics(y, probs, CLASSES, n_resamples=0)
    assert m.balanced_accuracy.value == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert m.macro_f1.value == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    for i, name in enumerate(CLASSES):
        assert m.per_class[name]["auroc"].value == pytest.approx(roc_auc_score(y == i, probs[:, i]))


def test_bootstrap_is_seeded_and_covers_the_value():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    probs = rng.dirichlet(np.ones(3), 2000) + 0.5 * np.eye(3)[y]
    probs /= probs.sum(1, keepdims=True)
    first = multiclass_metrics(y, probs, CLASSES, n_resamples=1000, seed=7)
    again = multiclass_metrics(y, probs, CLASSES, n_resamples=1000, seed=7)
    other = multiclass_metrics(y, probs, CLASSES, n_resamples=1000, seed=8)
    assert first.to_dict() == again.to_dict()
    assert first.accuracy.low != other.accuracy.low
    for interval in (first.accuracy, first.macro_f1, first.per_class["viral"]["auroc"]):
        assert interval.low < interval.value < interval.high
        # 2000 images: a 95% interval of a proportion is about +-2 points wide
        assert 0.01 < interval.high - interval.low < 0.08


def test_absent_class_gives_nan_auroc_and_resamples_without_it_are_skipped():
    y = np.array([0] * 30 + [1] * 30 + [2])  # one viral image: many resamples lack it
    probs = probs_predicting(list(y))
    m = multiclass_metrics(y, probs, CLASSES, n_resamples=300, seed=0)
    viral_auc = m.per_class["viral"]["auroc"]
    assert np.isnan(viral_auc.samples).sum() > 50
    assert viral_auc.value == 1.0 and viral_auc.low == 1.0 and viral_auc.high == 1.0
    absent = multiclass_metrics(np.array([0, 0, 1, 1]), probs_predicting([0, 1, 1, 1]), CLASSES, n_resamples=50)
    assert np.isnan(absent.per_class["viral"]["auroc"].value)
    assert np.isnan(absent.per_class["viral"]["auroc"].low)
    assert absent.to_dict()["per_class"]["viral"]["auroc"] == {"value": None, "ci_low": None, "ci_high": None}


def test_covid_vs_rest_view():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    probs = np.array(
        [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
         [0.5, 0.4, 0.1], [0.05, 0.05, 0.9], [0.3, 0.1, 0.6], [0.1, 0.2, 0.7]]
    )
    b = one_vs_rest(y, probs, CLASSES, "covid", n_resamples=0)
    assert (b.n_images, b.n_positive) == (8, 3)
    assert b.sensitivity.value == pytest.approx(2 / 3)  # covid 0.2 loses to normal
    assert b.specificity.value == pytest.approx(4 / 5)  # normal image with p(covid) 0.5 wins
    assert b.auroc.value == pytest.approx(roc_auc_score(y == 0, probs[:, 0]))
    with pytest.raises(ConfigError):
        one_vs_rest(y, probs, ["a", "b", "c"], "covid")


def test_group_bootstrap_draws_whole_patients():
    groups = ["p1", "p1", "p1", "p2", "p3", "p3"]
    weights = bootstrap_weights(6, 200, seed=1, groups=groups)
    assert weights.shape == (201, 6)
    assert (weights[0] == 1).all()
    assert (weights[1:, 0] == weights[1:, 1]).all() and (weights[1:, 1] == weights[1:, 2]).all()
    assert (weights[1:, 4] == weights[1:, 5]).all()
    # every resample draws 3 patients
    assert (weights[1:, [0, 3, 4]].sum(axis=1) == 3).all()
    with pytest.raises(ConfigError):
        bootstrap_weights(6, -1, seed=0)


def test_difference_of_intervals():
    a = binary_metrics(np.array([1, 1, 0, 0] * 20), np.tile([0.9, 0.8, 0.2, 0.1], 20), np.tile([1, 1, 0, 0], 20), n_resamples=200)
    b = binary_metrics(np.array([1, 1, 0, 0] * 20), np.tile([0.9, 0.3, 0.6, 0.1], 20), np.tile([1, 0, 1, 0], 20), n_resamples=200, seed=1)
    drop = difference(a.auroc, b.auroc)
    assert drop.value == pytest.approx(1.0 - 0.75)
    assert drop.low <= drop.value <= drop.high
    assert np.isnan(difference(a.auroc, Interval(0.5, 0.4, 0.6)).low)


def test_point_metrics_and_report_for_the_trainer():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300) + 0.3 * np.eye(3)[y]
    probs /= probs.sum(1, keepdims=True)
    point = point_metrics(y, probs, 3)
    assert point["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert point["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    report = classification_report(y, probs, CLASSES, n_resamples=50, seed=0)
    assert report.multiclass.macro_auroc.value == pytest.approx(point["auc"])
    assert report.covid_vs_rest.auroc.value == pytest.approx(roc_auc_score(y == 0, probs[:, 0]))
    assert classification_report(y, probs, ["normal", "viral", "other"], n_resamples=0).covid_vs_rest is None


def test_interval_formatting():
    assert format_interval(Interval(0.9123, 0.8991, 0.9252)) == "0.912 [0.899, 0.925]"
    assert format_interval(Interval(float("nan"), float("nan"), float("nan"))) == "-"
    assert format_interval(Interval(0.5, float("nan"), float("nan"))) == "0.500"
    table = format_table(["class", "n"], [["covid", "3"], ["viral", "12"]]).splitlines()
    assert table[0] == "class   n" and table[2] == "covid   3" and table[3] == "viral  12"


def noisy_task(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    probs = rng.dirichlet([1, 1, 1], n)
    probs[np.arange(n), y] += rng.random(n)
    return y, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("groups", [None, "patients"])
def test_bootstrap_in_chunks_gives_the_intervals_of_all_resamples_at_once(groups, monkeypatch):
    y, probs = noisy_task(301)
    keys = [f"p{i % 101}" for i in range(301)] if groups else None  # 101 patients: an odd count of draws per row
    monkeypatch.setattr(classification, "BOOTSTRAP_CHUNK_BYTES", 2**40)  # one chunk: every resample at once
    at_once = classification_report(y, probs, CLASSES, n_resamples=999, seed=5, groups=keys)
    monkeypatch.setattr(classification, "BOOTSTRAP_CHUNK_BYTES", 50 * 301 * 3)  # three resamples a chunk
    assert classification.chunk_rows(301) == 3
    chunked = classification_report(y, probs, CLASSES, n_resamples=999, seed=5, groups=keys)
    assert chunked.multiclass.to_dict() == at_once.multiclass.to_dict()
    assert chunked.covid_vs_rest.to_dict() == at_once.covid_vs_rest.to_dict()
    assert np.array_equal(chunked.multiclass.macro_auroc.samples, at_once.multiclass.macro_auroc.samples)
    if groups is None:  # the draws of one (resamples, images) draw, as the bootstrap made them before chunks
        draws = np.random.default_rng(5).integers(0, 301, size=(999, 301))
        counts = np.stack([np.bincount(row, minlength=301) for row in draws])
        assert np.array_equal(bootstrap_weights(301, 999, seed=5)[1:], counts)


def test_bootstrap_memory_does_not_grow_with_the_test_set():
    peaks = []
    for n in (2_000, 12_000):
        y, probs = noisy_task(n)
        tracemalloc.start()
        classification_report(y, probs, CLASSES, n_resamples=1000, seed=0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # All resamples at once took some 50 KB per image: 100 MB, then 600 MB.
    assert peaks[1] < 1.2 * peaks[0] and peaks[1] < 150e6, peaks
