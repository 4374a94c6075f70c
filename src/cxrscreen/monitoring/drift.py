"""Drift: does a window of recently screened images still look like the model's reference?

Four quantities are compared with the checkpoint's :class:`~cxrscreen.metrics.reference.OutputReference`:

- ``labels``: the share of each label (decided under the reference's thresholds, from the logged probabilities,
  so a server run with other ``--threshold`` values compares like with like; guard flags aside, they are the next
  quantity), chi-square test of the 2 x K table (reference counts, window counts);
- ``guard flags``: the OOD guard's flag rate, one-sided Fisher exact test (only a rise is news);
- ``p(<positive>)``: the positive class's probability, two-sample Kolmogorov-Smirnov test;
- ``guard score``: the guard's score, two-sample Kolmogorov-Smirnov test.

Multiple testing: a look tests four quantities (Holm's step-down correction) and a monitor looks again every
``step`` images. Looks overlap and are correlated; Bonferroni over the looks of a ``horizon`` of images keeps the
chance of any false alarm within any ``horizon`` images at most ``alpha`` (default: 1 in 20 per 1,000 images,
looking every 10 images). A quantity has *moved* when its corrected p-value is below ``alpha``; an alarm stands
while the latest look has a moved quantity. benchmarks/monitor.py measures the false alarms and detection delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

from cxrscreen.inference.options import decide
from cxrscreen.metrics.reference import OutputReference
from cxrscreen.monitoring.settings import MIN_IMAGES, DriftSettings  # noqa: F401 - re-exported

@dataclass(frozen=True)
class Observation:
    """One screened image as drift sees it: probabilities in the reference's class order, guard score and flag
    (None without a guard)."""

    probabilities: tuple[float, ...]
    guard_score: float | None
    flagged: bool | None

    @classmethod
    def from_record(cls, record: dict[str, Any], classes: Sequence[str]) -> Observation:
        """From an audit line (:func:`cxrscreen.monitoring.audit.audit_record`) of a screened image."""
        probabilities = record["probabilities"]
        score = record.get("guard_score")
        return cls(tuple(float(probabilities[c]) for c in classes), None if score is None else float(score),
                   record.get("guard_flag"))


@dataclass(frozen=True)
class QuantityResult:
    """One quantity in one window: reference and window values in words, the test's statistic and p-value, the
    p-value corrected for the quantities and the looks, and whether it moved."""

    name: str
    reference: str
    window: str
    statistic: float
    p_value: float
    corrected_p: float
    moved: bool

    def to_dict(self) -> dict[str, Any]:
        return {"quantity": self.name, "reference": self.reference, "window": self.window,
                "statistic": round(self.statistic, 6), "p_value": self.p_value, "corrected_p": self.corrected_p,
                "moved": self.moved}


@dataclass(frozen=True)
class WindowResult:
    """A look at images ``first``..``last`` (1-based positions among the screened images)."""

    first: int
    last: int
    quantities: list[QuantityResult] = field(default_factory=list)

    @property
    def images(self) -> int:
        return self.last - self.first + 1

    @property
    def alarm(self) -> bool:
        return any(q.moved for q in self.quantities)

    @property
    def moved(self) -> list[QuantityResult]:
        return [q for q in self.quantities if q.moved]

    def describe(self) -> str:
        """What moved, by how much and how sure, in one line ("-" when nothing did)."""
        return "; ".join(f"{q.name} {q.reference} -> {q.window} (p={q.corrected_p:.1g})" for q in self.moved) or "-"

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "images": self.images, "alarm": self.alarm,
                "moved": [q.name for q in self.moved], "quantities": [q.to_dict() for q in self.quantities]}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over the tests of one look)."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def label_test(reference: OutputReference, observations: Sequence[Observation]) -> tuple[str, str, float, float]:
    """(reference, window, chi-square, p) for the label shares."""
    classes = reference.classes
    counts = np.zeros(len(classes), dtype=np.int64)
    for obs in observations:
        counts[decide(np.asarray(obs.probabilities), classes, reference.thresholds)] += 1
    table = np.array([[reference.label_counts.get(c, 0) for c in classes], counts])
    table = table[:, table.sum(axis=0) > 0]
    if counts.sum() == 0 or table.shape[1] < 2:
        return "-", "-", 0.0, 1.0
    result = stats.chi2_contingency(table, correction=False)
    shares = counts / counts.sum()
    ref_shares = reference.label_shares()
    # The label whose share moved most says what moved.
    biggest = max(range(len(classes)), key=lambda i: abs(shares[i] - ref_shares[classes[i]]))
    name = classes[biggest]
    return (f"{name} {percent(ref_shares[name])}", f"{name} {percent(shares[biggest])}", float(result.statistic),
            float(result.pvalue))


def flag_test(reference: OutputReference, observations: Sequence[Observation]) -> tuple[str, str, float, float]:
    """(reference, window, odds ratio, one-sided p) for the guard's flag rate."""
    flags = [obs.flagged for obs in observations if obs.flagged is not None]
    flagged = int(sum(flags))
    table = [[flagged, len(flags) - flagged], [reference.flagged, reference.images - reference.flagged]]
    result = stats.fisher_exact(table, alternative="greater")
    rate = flagged / max(1, len(flags))
    statistic = float(result.statistic) if math.isfinite(result.statistic) else 0.0
    return percent(reference.flag_rate), percent(rate), statistic, float(result.pvalue)


def distribution_test(reference: OutputReference, values: np.ndarray, quantity: str) -> tuple[str, str, float, float]:
    """(reference median, window median, KS D, p) for ``quantity`` (``probability`` or ``guard``)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return "-", "-", 0.0, 1.0
    result = stats.ks_2samp(values, reference.sample(quantity))
    digits = ".3f" if quantity == "probability" else ".2f"
    return (f"median {reference.median(quantity):{digits}}", f"{float(np.median(values)):{digits}}",
            float(result.statistic), float(result.pvalue))


def look(reference: OutputReference, observations: Sequence[Observation], settings: DriftSettings,
         first: int = 1) -> WindowResult:
    """Compare one window of ``observations`` (screened images, oldest first; ``first`` is the position of the
    oldest) with ``reference``, with the corrections of :class:`DriftSettings`."""
    positive = reference.classes.index(reference.positive)
    tests = {"labels": label_test(reference, observations),
             f"p({reference.positive})": distribution_test(
                 reference, np.array([obs.probabilities[positive] for obs in observations]), "probability")}
    if reference.has_guard:
        tests["guard flags"] = flag_test(reference, observations)
        tests["guard score"] = distribution_test(
            reference, np.array([np.nan if obs.guard_score is None else obs.guard_score for obs in observations]),
            "guard")
    adjusted = holm([p for *_, p in tests.values()])
    quantities = []
    for (name, (ref, win, statistic, p)), corrected in zip(tests.items(), adjusted):
        corrected = min(1.0, corrected * settings.looks_per_horizon)
        quantities.append(QuantityResult(name, ref, win, statistic, p, corrected, corrected < settings.alpha))
    return WindowResult(first, first + len(observations) - 1, quantities)


def look_ends(count: int, settings: DriftSettings) -> list[int]:
    """Where the looks at ``count`` screened images end (exclusive): every ``step`` images from ``MIN_IMAGES`` on
    (over the last ``window`` of them, or all there are before the window fills), and at the last image."""
    ends = [end for end in range(settings.step, count + 1, settings.step) if end >= MIN_IMAGES]
    if count >= MIN_IMAGES and (not ends or ends[-1] != count):
        ends.append(count)
    return ends


def monitor(reference: OutputReference, observations: Sequence[Observation],
            settings: DriftSettings | None = None) -> list[WindowResult]:
    """Every look over ``observations`` (oldest first), as a monitor watching them arrive would have made."""
    settings = settings or DriftSettings()
    results = []
    for end in look_ends(len(observations), settings):
        start = max(0, end - settings.window)
        results.append(look(reference, observations[start:end], settings, first=start + 1))
    return results


def first_alarm(results: Iterable[WindowResult]) -> WindowResult | None:
    """The first look with an alarm, if any."""
    return next((result for result in results if result.alarm), None)
