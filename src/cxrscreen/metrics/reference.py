"""What a model does on its own validation images: the :class:`OutputReference` every checkpoint carries
(``ModelMeta.reference``), against which ``cxrscreen monitor`` and the servers hold the images they screen.

Small on purpose (a few kB in the checkpoint): counts of the decided labels and of guard flags, and 101 quantiles
of the positive class's probability and of the guard score, not the raw arrays. :meth:`OutputReference.sample`
turns quantiles back into a sample of the reference's own size for a two-sample test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np
from scipy.special import softmax

from cxrscreen.errors import ModelError

REFERENCE_VERSION = 1
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class OutputReference:
    """The model's outputs on ``images`` validation images.

    ``label_counts``: class -> images decided as it (under ``thresholds``, from the probabilities: the guard's
    flags are a quantity of their own). ``flagged``: images the guard flagged (its scores there are out of fold:
    what it gives images it never saw).
    ``probability_quantiles``: p(``positive``) at :data:`QUANTILE_LEVELS`; ``guard_quantiles`` the same for the
    guard score (empty without a guard). ``source``: which images, in words.
    """

    images: int
    classes: list[str]
    positive: str
    label_counts: dict[str, int]
    flagged: int
    probability_quantiles: list[float]
    guard_quantiles: list[float] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    source: str = ""

    @property
    def has_guard(self) -> bool:
        return bool(self.guard_quantiles)

    def label_shares(self) -> dict[str, float]:
        total = max(1, sum(self.label_counts.values()))
        return {c: self.label_counts.get(c, 0) / total for c in self.classes}

    @property
    def flag_rate(self) -> float:
        return self.flagged / max(1, self.images)

    def sample(self, quantity: str) -> np.ndarray:
        """A sample of size :attr:`images` whose empirical distribution is the stored quantiles' (``quantity``:
        ``probability`` or ``guard``), for two-sample tests that should weigh the reference by its real size."""
        quantiles = self.probability_quantiles if quantity == "probability" else self.guard_quantiles
        levels = (np.arange(self.images) + 0.5) / self.images
        return np.interp(levels, QUANTILE_LEVELS, np.asarray(quantiles, dtype=np.float64))

    def median(self, quantity: str) -> float:
        quantiles = self.probability_quantiles if quantity == "probability" else self.guard_quantiles
        return float(quantiles[len(quantiles) // 2])

    def with_guard(self, guard_scores: np.ndarray, guard_threshold: float) -> OutputReference:
        """This reference with the guard's part from new scores (after ``refit-guard``); NaN scores left out."""
        scores = np.asarray(guard_scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        return replace(self, flagged=int((scores > guard_threshold).sum()),
                       guard_quantiles=[float(q) for q in np.quantile(scores, QUANTILE_LEVELS)])

    def to_dict(self) -> dict[str, Any]:
        return {"version": REFERENCE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputReference:
        """The reference stored in a checkpoint; :class:`ModelError` when it is not one this version reads."""
        if int(data.get("version", 0)) != REFERENCE_VERSION:
            raise ModelError(f"its reference has version {data.get('version')}, this cxrscreen reads {REFERENCE_VERSION}")
        try:
            return cls(images=int(data["images"]), classes=list(data["classes"]), positive=str(data["positive"]),
                       label_counts={str(k): int(v) for k, v in data["label_counts"].items()},
                       flagged=int(data["flagged"]),
                       probability_quantiles=[float(v) for v in data["probability_quantiles"]],
                       guard_quantiles=[float(v) for v in data.get("guard_quantiles", [])],
                       thresholds={str(k): float(v) for k, v in data.get("thresholds", {}).items()},
                       source=str(data.get("source", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"its reference is incomplete ({type(exc).__name__}: {exc})") from None


def positive_class(classes: Sequence[str]) -> str:
    """The class whose probability the reference follows: ``covid`` when the model has it, else the first class."""
    return "covid" if "covid" in classes else classes[0]


def build_reference(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    guard_scores: np.ndarray | None,
    guard_threshold: float | None,
    thresholds: dict[str, float] | None = None,
    positive: str | None = None,
    source: str = "",
) -> OutputReference:
    """The reference of ``probs`` (N, C) with decided class indices ``labels`` (N,) (the caller decides, under
    ``thresholds``) and guard scores (N,) flagged above ``guard_threshold`` (None, None: no guard). Scores that are
    NaN (images the guard could not read) are left out of the guard's part."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(probs) < 2 or len(labels) != len(probs):
        raise ValueError(f"a reference needs at least 2 rows of {len(classes)} probabilities and one label per row")
    positive = positive or positive_class(classes)
    counts = np.bincount(np.asarray(labels), minlength=len(classes))
    reference = OutputReference(
        images=int(len(probs)), classes=list(classes), positive=positive,
        label_counts={c: int(n) for c, n in zip(classes, counts)}, flagged=0,
        probability_quantiles=[float(q) for q in np.quantile(probs[:, list(classes).index(positive)], QUANTILE_LEVELS)],
        thresholds=dict(thresholds or {}), source=source)
    if guard_scores is None or guard_threshold is None:
        return reference
    return reference.with_guard(guard_scores, guard_threshold)


def validation_reference(logits: np.ndarray, classes: Sequence[str], guard_scores: np.ndarray,
                         guard_threshold: float) -> OutputReference:
    """The reference a training run stores: its validation images' temperature-scaled ``logits`` (N, C), each
    decided as the most probable class, with their out-of-fold guard scores (N,)."""
    probs = softmax(logits, axis=1)
    return build_reference(probs, probs.argmax(axis=1), classes, guard_scores, guard_threshold,
                           source=f"validation split, {len(probs)} images")
