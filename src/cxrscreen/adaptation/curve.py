"""The learning curve: how the cross-validated AUROC grows with the number of labelled images per class.

For each size, each repeat draws that many images of each class from every fold's training folds (all of a class
when it has fewer), fine-tunes on them alone and scores the held-out fold; the out-of-fold scores of a repeat give
one AUROC with its bootstrap samples. A size's entry is the mean over repeats, with the percentile interval of
all repeats' bootstrap samples together (data and draw both vary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrscreen.adaptation.scores import interval_fields
from cxrscreen.metrics.classification import Interval, percentile_interval


def curve_entry(size: int, drawn: Sequence[dict[str, int]], aurocs: Sequence[Interval]) -> dict[str, Any]:
    """One row of ``learning_curve``: the size asked, the mean images per class actually drawn (per fold and
    repeat, ``drawn``), the mean AUROC of the repeats (``aurocs``) and the interval of their pooled resamples."""
    pooled = np.concatenate([a.samples for a in aurocs if a.samples is not None] or [np.zeros(0)])
    low, high = percentile_interval(pooled)
    values = np.array([a.value for a in aurocs], dtype=np.float64)
    mean = Interval(float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"), low, high)
    classes = list(drawn[0]) if drawn else []
    return {
        "size": int(size),
        "images_per_class": {c: round(float(np.mean([d[c] for d in drawn])), 1) for c in classes},
        "repeats": len(aurocs),
        **interval_fields("auroc", mean),
        "auroc_repeats": [None if not np.isfinite(v) else round(float(v), 6) for v in values],
    }


def plot_learning_curve(curve: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any], positive: str,
                        path: Path) -> Path:
    """AUROC (with its CI) against labelled images per class, beside the parent's and the full adaptation's."""
    # Plotting libraries load only when a curve is drawn (start-up time of every other command).
    from matplotlib.figure import Figure

    from cxrscreen.evaluation.plots import save_figure

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    rows = [row for row in curve if row["auroc"] is not None]
    sizes = np.array([row["size"] for row in rows])
    values = np.array([row["auroc"] for row in rows])
    lows = np.array([row["auroc_ci"][0] if row["auroc_ci"][0] is not None else row["auroc"] for row in rows])
    highs = np.array([row["auroc_ci"][1] if row["auroc_ci"][1] is not None else row["auroc"] for row in rows])
    ax.errorbar(sizes, values, yerr=[values - lows, highs - values], marker="o", capsize=3, label="fine-tuned on N per class")
    for figures, style, label in ((before, ":", "before (parent model)"), (after, "--", "after (all training folds)")):
        if figures.get("auroc") is not None:
            ax.axhline(figures["auroc"], linestyle=style, color="grey" if style == ":" else "black", label=label)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel(f"{positive}-vs-rest AUROC (out of fold)")
    ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)
