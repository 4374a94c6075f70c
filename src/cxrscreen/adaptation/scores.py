"""The figures adapt reports, before and after, on the same images: the positive class against the rest (AUROC,
and the sensitivity and specificity of a decision) and the multiclass accuracy and macro-F1, all with 95% bootstrap
CIs that resample patients (:mod:`cxrscreen.metrics.classification`); and the operating threshold."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cxrscreen.metrics.classification import Interval, binary_metrics, multiclass_metrics


def interval_fields(name: str, interval: Interval) -> dict[str, Any]:
    """``{name: value, name_ci: [low, high]}`` (None where undefined), as adapt.json stores a metric."""
    stored = interval.to_dict()
    return {name: stored["value"], f"{name}_ci": [stored["ci_low"], stored["ci_high"]]}


def site_scores(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str], positive: str, groups: Sequence,
                n_resamples: int, seed: int) -> dict[str, Any]:
    """Figures of ``probs`` (N, C) against ``targets`` (N,): positive-vs-rest AUROC, sensitivity and specificity of
    the decision "the positive class is the most probable", accuracy and macro-F1."""
    index = list(classes).index(positive)
    is_positive = targets == index
    predicted = probs.argmax(axis=1) == index
    binary = binary_metrics(is_positive, probs[:, index], predicted, positive, n_resamples, seed, groups)
    multi = multiclass_metrics(targets, probs, classes, n_resamples, seed, groups)
    out: dict[str, Any] = {"n": int(len(targets)), "n_positive": int(is_positive.sum())}
    for name, interval in (("auroc", binary.auroc), ("sensitivity", binary.sensitivity),
                           ("specificity", binary.specificity), ("accuracy", multi.accuracy), ("macro_f1", multi.macro_f1)):
        out.update(interval_fields(name, interval))
    return out


def operating_threshold(score: np.ndarray, is_positive: np.ndarray, target_sensitivity: float) -> float:
    """The highest threshold t with sensitivity (share of positives with ``score >= t``) at least the target."""
    positives = np.sort(np.asarray(score, dtype=np.float64)[np.asarray(is_positive, dtype=bool)])
    if positives.size == 0:
        return 0.5
    index = positives.size - int(np.ceil(target_sensitivity * positives.size - 1e-9))
    return float(positives[max(0, index)])


def by_source(sources: Sequence[str], before: np.ndarray, after: np.ndarray, targets: np.ndarray,
              classes: Sequence[str], positive: str, groups: Sequence, n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """Per source: images, positives and the before/after figures where the source has both outcomes."""
    rows = []
    sources = np.asarray(sources)
    groups = np.asarray(groups)
    index = list(classes).index(positive)
    for source in sorted(set(sources.tolist())):
        keep = sources == source
        n_pos = int((targets[keep] == index).sum())
        row: dict[str, Any] = {"source": source, "n": int(keep.sum()), "n_positive": n_pos}
        if 0 < n_pos < keep.sum():
            for side, probs in (("before", before), ("after", after)):
                row[side] = site_scores(probs[keep], targets[keep], classes, positive, groups[keep], n_resamples, seed)
        rows.append(row)
    return rows
