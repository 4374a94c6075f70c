"""Every result says how its label was decided: the most probable class, or a threshold and its cut-off."""

from __future__ import annotations

import json

import numpy as np

from cxrscreen.inference.options import explain_decision
from cxrscreen.inference.predictor import load_predictor

CLASSES = ["covid", "normal", "viral"]


def test_a_threshold_that_overrules_the_largest_probability_says_so():
    decision = explain_decision(np.array([0.01, 0.514, 0.476]), CLASSES, {"viral": 0.3})
    assert (decision.label, decision.rule, decision.cutoff) == ("viral", "threshold", 0.3)
    assert decision.most_probable == "normal" and decision.overrules_most_probable
    assert "0.48 >= threshold 0.30" in decision.describe() and "most probable class is normal" in decision.describe()


def test_classes_below_their_threshold_are_named_with_their_cutoffs():
    decision = explain_decision(np.array([0.2, 0.3, 0.5]), CLASSES, {"covid": 0.3})
    assert (decision.label, decision.rule, decision.below) == ("viral", "below_threshold", {"covid": 0.3})
    assert not decision.overrules_most_probable and "covid < 0.30" in decision.describe()


def test_without_thresholds_the_label_is_the_most_probable_class():
    decision = explain_decision(np.array([0.2, 0.5, 0.3]), CLASSES, {})
    assert (decision.label, decision.rule, decision.cutoff, decision.below) == ("normal", "most_probable", None, {})


def test_a_prediction_carries_its_decision_in_python_and_json(tiny_checkpoint, real_xrays):
    plain = load_predictor(tiny_checkpoint, backend="torch", threads=1).predict(real_xrays[0])
    second = sorted(plain.probabilities, key=plain.probabilities.__getitem__)[-2]
    cutoff = round(plain.probabilities[second] - 0.001, 3)
    predictor = load_predictor(tiny_checkpoint, backend="torch", threads=1, thresholds={second: cutoff})
    result = predictor.predict(real_xrays[0])
    assert result.in_distribution  # the tiny model has no guard
    assert result.label == second == result.decision.label
    assert result.decision.rule == "threshold" and result.decision.cutoff == cutoff
    assert result.decision.most_probable == plain.top_class != second
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["decision"]["rule"] == "threshold" and as_json["decision"]["most_probable"] == plain.top_class
