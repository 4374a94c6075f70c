"""``cxrscreen monitor --plot``: each quantity over the looks against the reference's band (where 95% of windows
of that size drawn from the reference would fall), the looks with an alarm shaded."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cxrscreen.inference.options import decide
from cxrscreen.metrics.reference import QUANTILE_LEVELS, OutputReference
from cxrscreen.monitoring.drift import Observation
from cxrscreen.monitoring.report import MonitorReport

Z95 = 1.96


def median_band(reference: OutputReference, quantity: str, n: int) -> tuple[float, float]:
    """Where the median of ``n`` reference values falls 95% of the time (the order statistics' levels)."""
    quantiles = reference.probability_quantiles if quantity == "probability" else reference.guard_quantiles
    spread = Z95 * 0.5 / math.sqrt(max(1, n))
    low, high = np.interp([0.5 - spread, 0.5 + spread], QUANTILE_LEVELS, quantiles)
    return float(low), float(high)


def window_values(report: MonitorReport) -> dict[str, list[float]]:
    """Per look: each label's share, the flag rate, and the medians of p(positive) and of the guard score."""
    reference, classes = report.reference, report.reference.classes
    positive = classes.index(reference.positive)
    values: dict[str, list[float]] = {name: [] for name in [*classes, "flags", "probability", "guard", "n"]}
    for look in report.looks:
        window: list[Observation] = report.observations[look.first - 1: look.last]
        counts = np.bincount([decide(np.asarray(o.probabilities), classes, reference.thresholds) for o in window],
                             minlength=len(classes))
        for i, name in enumerate(classes):
            values[name].append(counts[i] / max(1, len(window)))
        values["flags"].append(float(np.mean([bool(o.flagged) for o in window])))
        values["probability"].append(float(np.median([o.probabilities[positive] for o in window])))
        scores = [o.guard_score for o in window if o.guard_score is not None]
        values["guard"].append(float(np.median(scores)) if scores else math.nan)
        values["n"].append(len(window))
    return values


def plot_drift(report: MonitorReport, path: str | os.PathLike) -> Path:
    """Write the drift figure of ``report`` to ``path`` (PNG, PDF or SVG by its suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = report.reference
    values = window_values(report)
    x = [look.last for look in report.looks]
    n = np.array(values["n"], dtype=float)
    panels = [("label shares", reference.classes), ("guard flag rate", ["flags"]),
              (f"median p({reference.positive})", ["probability"])]
    if reference.has_guard:
        panels.append(("median guard score", ["guard"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, names) in zip(axes[:, 0], panels):
        for name in names:
            if name in reference.classes or name == "flags":
                centre = reference.label_shares()[name] if name != "flags" else reference.flag_rate
                half = Z95 * np.sqrt(centre * (1 - centre) / np.maximum(n, 1))
                low, high = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
            else:
                bands = [median_band(reference, name, int(k)) for k in n]
                low, high = np.array([b[0] for b in bands]), np.array([b[1] for b in bands])
            line, = ax.plot(x, values[name], label=name if len(names) > 1 else None)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        for look in report.looks:
            if look.alarm:
                ax.axvspan(look.last - report.settings.step, look.last, color="red", alpha=0.08, linewidth=0)
        ax.set_title(title, fontsize=9)
        if len(names) > 1:
            ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("screened image (end of the look's window); shaded bands: the reference's 95% range, "
                           "red: alarm", fontsize=8)
    fig.suptitle(f"{report.model.name}: drift against its reference ({reference.images} images)", fontsize=10)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
