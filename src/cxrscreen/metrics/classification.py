"""Classification metrics with 95% bootstrap confidence intervals.

Every metric is computed from per-image weights: the point estimate uses weight 1 for every image, a bootstrap
resample uses how many times it drew each image. One weighted code path then gives the value and the resamples,
as matrix operations over (resamples, images), so 1000 resamples of a few thousand images take seconds. The
resamples are drawn and counted a chunk at a time (:func:`bootstrap_chunks`, about 64 MB), so memory does not grow
with the test set (all at once it took some 50 KB per image).

Resamples can draw whole groups (patients) instead of images, since images of one patient are not independent.
A metric that is undefined in a resample (e.g. a class's AUROC when the resample holds no image of that class)
is NaN there and is left out of its interval.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from cxrscreen.errors import ConfigError

CI_LEVEL = 0.95
BOOTSTRAP_CHUNK_BYTES = 64 * 2**20  # working memory of one chunk of resamples (see bootstrap_chunks)
PER_CLASS_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "auroc")


@dataclass(frozen=True)
class Interval:
    """A metric's value on the data and its percentile bootstrap interval (NaN where undefined).

    ``samples`` keeps the resampled values (for differences between collections); it is not serialised.
    """

    value: float
    low: float
    high: float
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_values(cls, values: np.ndarray) -> "Interval":
        """``values[0]`` is the point estimate, ``values[1:]`` the bootstrap resamples."""
        samples = np.asarray(values[1:], dtype=np.float64)
        low, high = percentile_interval(samples)
        return cls(float(values[0]), low, high, samples)

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _json_float(self.value), "ci_low": _json_float(self.low), "ci_high": _json_float(self.high)}


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of the finite ``samples``; (NaN, NaN) when none is finite."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def difference(a: Interval, b: Interval) -> Interval:
    """``a - b`` with an interval from the two (independent) bootstraps paired resample by resample."""
    if a.samples is None or b.samples is None or a.samples.size != b.samples.size:
        return Interval(a.value - b.value, float("nan"), float("nan"))
    return Interval.from_values(np.concatenate([[a.value - b.value], a.samples - b.samples]))


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def bootstrap_weights(n_items: int, n_resamples: int, seed: int, groups: Sequence | None = None) -> np.ndarray:
    """Image weights (1 + n_resamples, n_items) float32: row 0 all ones, row b how often resample b drew each image.

    With ``groups`` (one key per image, e.g. the patient), resamples draw groups with replacement and every
    image of a drawn group counts once per draw. All rows at once: :func:`bootstrap_chunks` gives the same rows a
    few at a time.
    """
    return np.concatenate(list(bootstrap_chunks(n_items, n_resamples, seed, groups, rows=n_resamples + 1)))


def chunk_rows(n_items: int) -> int:
    """Resamples per chunk: about :data:`BOOTSTRAP_CHUNK_BYTES` of working arrays (some 50 bytes per image and
    resample), at least 2."""
    return max(2, BOOTSTRAP_CHUNK_BYTES // (50 * max(n_items, 1)))


def bootstrap_chunks(n_items: int, n_resamples: int, seed: int, groups: Sequence | None = None,
                     rows: int | None = None) -> Iterator[np.ndarray]:
    """The rows of :func:`bootstrap_weights`, ``rows`` at a time (default :func:`chunk_rows`), so that memory does
    not grow with the number of images times resamples: the first chunk starts with the all-ones row.

    The draws are those of one ``(n_resamples, n_groups)`` draw from the seeded generator (drawn row after row, the
    chunks consume it as the single draw did), so the intervals do not depend on the chunk size.
    """
    if n_resamples < 0:
        raise ConfigError(f"--bootstrap must be 0 or more, got {n_resamples}")
    if groups is None:
        group_of_item, n_groups = np.arange(n_items), n_items
    else:
        _, group_of_item = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        n_groups = int(group_of_item.max()) + 1 if n_items else 0
    rows = rows or chunk_rows(n_items)
    rng = np.random.default_rng(seed)
    yield np.ones((1, n_items), dtype=np.float32)
    for start in range(0, n_resamples, rows):
        count = min(rows, n_resamples - start)
        draws = rng.integers(0, max(n_groups, 1), size=(count, n_groups))
        offsets = np.arange(count)[:, None] * n_groups
        group_counts = np.bincount((draws + offsets).ravel(), minlength=count * n_groups)
        yield group_counts.reshape(count, n_groups).astype(np.float32)[:, group_of_item]


def weighted_confusion(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices (R, C, C) for weights (R, N): ``[r, t, p]`` = weight of images of class t predicted p."""
    pair = np.asarray(y_true) * n_classes + np.asarray(y_pred)
    onehot = np.zeros((pair.size, n_classes * n_classes), dtype=np.float32)
    onehot[np.arange(pair.size), pair] = 1.0
    return (weights @ onehot).astype(np.float64).reshape(-1, n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def confusion_rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest rates per class from confusion matrices (R, C, C): each (R, C), NaN where 0/0."""
    total = cm.sum(axis=(1, 2))[:, None]
    tp = np.diagonal(cm, axis1=1, axis2=2)
    actual = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    fn, fp = actual - tp, predicted - tp
    tn = total - tp - fn - fp
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (R,) of ``scores`` (N,) for the boolean labels ``positive`` (N,) under each row of ``weights`` (R, N).

    The Mann-Whitney statistic: the weighted share of (positive, negative) pairs ranked correctly, ties counting
    one half. NaN where a row weighs no positive or no negative image.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    is_pos = np.asarray(positive, dtype=bool)[order]
    w = weights[:, order].astype(np.float64)
    if sorted_scores.size == 0:
        return np.full(weights.shape[0], np.nan)
    # Tied scores form one block, so ties are compared as halves.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    pos_w = np.add.reduceat(w * is_pos, starts, axis=1)
    neg_w = np.add.reduceat(w * ~is_pos, starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    correct = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    return _ratio(correct, pos_w.sum(axis=1) * neg_w.sum(axis=1))


@dataclass
class MulticlassMetrics:
    """Multiclass metrics of one evaluation, each an :class:`Interval`; ``confusion[t, p]`` counts images."""

    classes: list[str]
    n_images: int
    support: dict[str, int]
    accuracy: Interval
    balanced_accuracy: Interval
    macro_f1: Interval
    macro_auroc: Interval
    per_class: dict[str, dict[str, Interval]]
    confusion: np.ndarray

    def to_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "n_images": self.n_images,
            "support": dict(self.support),
            "accuracy": self.accuracy.to_dict(),
            "balanced_accuracy": self.balanced_accuracy.to_dict(),
            "macro_f1": self.macro_f1.to_dict(),
            "macro_auroc": self.macro_auroc.to_dict(),
            "per_class": {c: {k: v.to_dict() for k, v in m.items()} for c, m in self.per_class.items()},
            "confusion_matrix": self.confusion.astype(int).tolist(),
        }


@dataclass
class BinaryMetrics:
    """One class against all others (e.g. COVID-vs-rest): AUROC of its probability, and the argmax decision's
    sensitivity and specificity."""

    positive: str
    n_images: int
    n_positive: int
    auroc: Interval
    sensitivity: Interval
    specificity: Interval

    def to_dict(self) -> dict:
        return {
            "positive": self.positive,
            "n_images": self.n_images,
            "n_positive": self.n_positive,
            "auroc": self.auroc.to_dict(),
            "sensitivity": self.sensitivity.to_dict(),
            "specificity": self.specificity.to_dict(),
        }


def summary_rates(cm: np.ndarray, rates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 and macro-AUROC (``auc``), each (R,), from confusion matrices
    (R, C, C) and the per-class ``rates`` of :func:`confusion_rates` plus ``auroc`` (R, C)."""
    with warnings.catch_warnings():
        # An all-NaN row (no class defined in that resample) is meant to give NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "accuracy": _ratio(np.trace(cm, axis1=1, axis2=2), cm.sum(axis=(1, 2))),
            "balanced_accuracy": np.nanmean(rates["sensitivity"], axis=1),
            "macro_f1": np.nanmean(rates["f1"], axis=1),
            "auc": np.nanmean(rates["auroc"], axis=1),
        }


def point_metrics(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> dict[str, float]:
    """Point estimates without resampling (cheap, e.g. to pick the best epoch): accuracy, balanced_accuracy,
    macro_f1 and auc (macro one-vs-rest AUROC) from labels (N,) and probabilities (N, C)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = _check_probs(probs, y_true.size, num_classes)
    weights = np.ones((1, y_true.size), dtype=np.float32)
    cm = weighted_confusion(weights, y_true, probs.argmax(axis=1), num_classes)
    rates = confusion_rates(cm)
    rates["auroc"] = np.stack([weighted_auroc(probs[:, i], y_true == i, weights) for i in range(num_classes)], axis=1)
    return {name: float(values[0]) for name, values in summary_rates(cm, rates).items()}


def _check_probs(probs: np.ndarray, n: int, n_classes: int | None = None) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n or (n_classes is not None and probs.shape[1] != n_classes):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {n} images x {n_classes} classes")
    return probs


def multiclass_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence | None = None,
) -> MulticlassMetrics:
    """Accuracy, balanced accuracy, macro-F1, macro-AUROC and per-class rates and one-vs-rest AUROC, with CIs.

    ``y_true`` (N,) class indices, ``probs`` (N, C) probabilities (the decision is their argmax). Balanced accuracy,
    macro-F1 and macro-AUROC average over the classes where they are defined in the data or resample (present, or
    predicted for F1; present and not alone for AUROC).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    n_classes = len(classes)
    probs = _check_probs(probs, y_true.size, n_classes)
    y_pred = probs.argmax(axis=1) if y_true.size else np.zeros(0, dtype=np.int64)
    parts = [(weighted_confusion(weights, y_true, y_pred, n_classes),
              np.stack([weighted_auroc(probs[:, i], y_true == i, weights) for i in range(n_classes)], axis=1))
             for weights in bootstrap_chunks(y_true.size, n_resamples, seed, groups)]
    cm = np.concatenate([part[0] for part in parts])
    rates = confusion_rates(cm)
    rates["auroc"] = np.concatenate([part[1] for part in parts])
    summary = summary_rates(cm, rates)
    per_class = {
        name: {metric: Interval.from_values(rates[metric][:, index]) for metric in PER_CLASS_METRICS}
        for index, name in enumerate(classes)
    }
    return MulticlassMetrics(
        classes=list(classes),
        n_images=int(y_true.size),
        support={name: int((y_true == i).sum()) for i, name in enumerate(classes)},
        accuracy=Interval.from_values(summary["accuracy"]),
        balanced_accuracy=Interval.from_values(summary["balanced_accuracy"]),
        macro_f1=Interval.from_values(summary["macro_f1"]),
        macro_auroc=Interval.from_values(summary["auc"]),
        per_class=per_class,
        confusion=cm[0].round().astype(np.int64),
    )


def binary_metrics(
    is_positive: np.ndarray,
    score: np.ndarray,
    predicted_positive: np.ndarray,
    positive: str = "covid",
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence | None = None,
) -> BinaryMetrics:
    """AUROC of ``score`` (N,) for ``is_positive`` (N,) and sensitivity/specificity of ``predicted_positive``."""
    truth = np.asarray(is_positive, dtype=bool)
    decision = np.asarray(predicted_positive, dtype=bool)
    parts = [(weighted_confusion(weights, truth.astype(np.int64), decision.astype(np.int64), 2),
              weighted_auroc(np.asarray(score, dtype=np.float64), truth, weights))
             for weights in bootstrap_chunks(truth.size, n_resamples, seed, groups)]
    cm = np.concatenate([part[0] for part in parts])
    tn, fp, fn, tp = cm[:, 0, 0], cm[:, 0, 1], cm[:, 1, 0], cm[:, 1, 1]
    return BinaryMetrics(
        positive=positive,
        n_images=int(truth.size),
        n_positive=int(truth.sum()),
        auroc=Interval.from_values(np.concatenate([part[1] for part in parts])),
        sensitivity=Interval.from_values(_ratio(tp, tp + fn)),
        specificity=Interval.from_values(_ratio(tn, tn + fp)),
    )


def class_vs_rest(is_positive: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: str = "covid", **kw) -> BinaryMetrics:
    """:func:`binary_metrics` for one of the model's classes: p(positive) as score, argmax == positive as decision;
    ``is_positive`` (N,) is the truth (e.g. every image whose finding is COVID, with or without a model class)."""
    if positive not in classes:
        raise ConfigError(f"the model has no class {positive!r} (classes: {', '.join(classes)})")
    index = list(classes).index(positive)
    probs = _check_probs(probs, len(is_positive))
    return binary_metrics(is_positive, probs[:, index], probs.argmax(axis=1) == index, positive, **kw)


def one_vs_rest(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: str = "covid", **kw) -> BinaryMetrics:
    """:func:`class_vs_rest` with the truth given as class indices (N,)."""
    index = list(classes).index(positive) if positive in classes else -1
    return class_vs_rest(np.asarray(y_true) == index, probs, classes, positive, **kw)



@dataclass
class ClassificationReport:
    """Multiclass metrics and, when the classes include ``covid``, the COVID-vs-rest view, all with CIs."""

    multiclass: MulticlassMetrics
    covid_vs_rest: BinaryMetrics | None

    def to_dict(self) -> dict:
        return {
            "multiclass": self.multiclass.to_dict(),
            "covid_vs_rest": None if self.covid_vs_rest is None else self.covid_vs_rest.to_dict(),
        }


def classification_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence | None = None,
) -> ClassificationReport:
    """:func:`multiclass_metrics` plus :func:`one_vs_rest` for ``covid`` when it is one of ``classes``."""
    multiclass = multiclass_metrics(y_true, probs, classes, n_resamples, seed, groups)
    covid = one_vs_rest(y_true, probs, classes, "covid", n_resamples=n_resamples, seed=seed, groups=groups) if "covid" in classes else None
    return ClassificationReport(multiclass, covid)
