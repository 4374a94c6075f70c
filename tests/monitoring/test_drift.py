"""The drift statistic: Holm's correction, a window like the reference raises nothing, a moved quantity is named."""

from __future__ import annotations

import numpy as np
import pytest

from cxrscreen.errors import ConfigError, ModelError
from cxrscreen.metrics.reference import OutputReference, build_reference
from cxrscreen.monitoring.drift import DriftSettings, Observation, holm, look, look_ends, monitor

CLASSES = ["covid", "normal", "viral"]


def outputs(rng: np.random.Generator, n: int, covid_share: float = 0.35, guard_shift: float = 0.0):
    """n probability rows whose decided label is covid with ``covid_share``, and guard scores."""
    covid = rng.random(n) < covid_share
    other = np.where(rng.random(n) < 0.75, 1, 2)
    labels = np.where(covid, 0, other)
    probs = np.full((n, 3), 0.05)
    probs[np.arange(n), labels] = 0.9
    probs += rng.random((n, 3)) * 0.04
    probs /= probs.sum(axis=1, keepdims=True)
    scores = rng.normal(40.0 + guard_shift, 5.0, n)
    return probs, labels, scores


def observations(probs, scores, threshold=55.0) -> list[Observation]:
    return [Observation(tuple(p), float(s), bool(s > threshold)) for p, s in zip(probs, scores)]


@pytest.fixture(scope="module")
def reference() -> OutputReference:
    probs, labels, scores = outputs(np.random.default_rng(0), 1500)
    return build_reference(probs, labels, CLASSES, scores, 55.0, source="synthetic")


def test_holm_matches_the_step_down_rule():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_reference_survives_the_checkpoint_round_trip(reference):
    again = OutputReference.from_dict(reference.to_dict())
    assert again == reference
    assert abs(np.median(again.sample("guard")) - reference.median("guard")) < 0.5
    with pytest.raises(ModelError, match="version"):
        OutputReference.from_dict({**reference.to_dict(), "version": 99})


def test_a_window_like_the_reference_moves_nothing(reference):
    probs, _, scores = outputs(np.random.default_rng(1), 200)
    result = look(reference, observations(probs, scores), DriftSettings())
    assert not result.alarm and result.describe() == "-"
    assert [q.name for q in result.quantities] == ["labels", "p(covid)", "guard flags", "guard score"]


def test_moved_quantities_are_named_with_their_size(reference):
    probs, _, scores = outputs(np.random.default_rng(2), 200, covid_share=0.7)
    result = look(reference, observations(probs, scores), DriftSettings())
    assert {q.name for q in result.moved} == {"labels", "p(covid)"}
    assert "covid" in result.describe() and "->" in result.describe()
    probs, _, scores = outputs(np.random.default_rng(3), 200, guard_shift=12.0)
    result = look(reference, observations(probs, scores), DriftSettings())
    assert {q.name for q in result.moved} == {"guard flags", "guard score"}


def test_looks_come_every_step_and_at_the_end():
    settings = DriftSettings(window=200, step=10)
    assert look_ends(25, settings) == []
    assert look_ends(45, settings) == [30, 40, 45]
    assert look_ends(600, settings)[-1] == 600 and len(look_ends(600, settings)) == 58


def test_more_looks_per_horizon_make_each_look_stricter(reference):
    probs, _, scores = outputs(np.random.default_rng(4), 200, covid_share=0.45)
    window = observations(probs, scores)
    few, many = (look(reference, window, DriftSettings(horizon=h)) for h in (10, 1000))
    assert many.quantities[0].corrected_p == pytest.approx(min(1.0, few.quantities[0].corrected_p * 100))


def test_a_monitor_over_a_shift_alarms_after_it(reference):
    rng = np.random.default_rng(5)
    before = observations(*outputs(rng, 300)[::2])
    after = observations(*outputs(rng, 300, covid_share=0.8)[::2])
    looks = monitor(reference, before + after)
    first = next(result for result in looks if result.alarm)
    assert 300 < first.last <= 400


@pytest.mark.parametrize("kwargs, message", [({"window": 10}, "--window"), ({"step": 0}, "--step"),
                                             ({"alpha": 1.5}, "--alpha"), ({"horizon": 1}, "--horizon")])
def test_bad_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DriftSettings(**kwargs)
