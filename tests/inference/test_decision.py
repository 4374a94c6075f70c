"""Every result says how its label was decided: the most probable class, or a threshold and its cut-off."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from cxrscreen.cli import main
from cxrscreen.inference.options import explain_decision
from cxrscreen.inference.predictor import load_predictor

CLASSES = ["covid", "normal", "viral"]


def test_a_threshold_that_overrules_the_largest_probability_says_so():
    decision = explain_decision(np.array([0.01, 0.514, 0.476]), CLASSES, {"viral": 0.3})
    assert (decision.label, decision.rule, decision.cutoff) == ("viral", "threshold", 0.3)
    assert decision.most_probable == "normal" and decision.overrules_most_probable
    assert "0.476 >= threshold 0.3" in decision.describe() and "most probable class is normal" in decision.describe()


def test_classes_below_their_threshold_are_named_with_their_cutoffs():
    decision = explain_decision(np.array([0.2, 0.3, 0.5]), CLASSES, {"covid": 0.3})
    assert (decision.label, decision.rule, decision.below) == ("viral", "below_threshold", {"covid": 0.3})
    assert not decision.overrules_most_probable and "covid < 0.3" in decision.describe()


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


def test_predict_table_and_csv_say_when_a_stored_threshold_overrules_the_most_probable_class(
    capsys, tiny_checkpoint, checkpoint_factory, real_xrays, tmp_path: Path
):
    plain = load_predictor(tiny_checkpoint, backend="torch", threads=1).predict(real_xrays[0])
    second = sorted(plain.probabilities, key=plain.probabilities.__getitem__)[-2]
    cutoff = round(plain.probabilities[second] - 0.0005, 4)
    # The same weights (same seed) with an operating point stored in the checkpoint, as `train` stores one.
    stored = checkpoint_factory(tmp_path / "stored.pt", thresholds={second: cutoff})

    assert main(["predict", str(real_xrays[0]), "--model", str(stored), "--backend", "torch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-2:] == ["rule", "path"]
    assert lines[1].startswith(second) and f"{second}>={cutoff:g}, top {plain.top_class}" in lines[1]
    assert "1 label(s) are not the most probable class" in lines[2]

    assert main(["predict", str(real_xrays[0]), "--model", str(stored), "--backend", "torch", "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert (row["label"], row["rule"], float(row["cutoff"]), row["most_probable"]) == (
        second, "threshold", cutoff, plain.top_class)
