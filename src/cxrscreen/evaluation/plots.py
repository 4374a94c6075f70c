"""Evaluation figures as PNG files, written atomically.

Figures are built with matplotlib's object API (:class:`matplotlib.figure.Figure`, rendered by Agg), not pyplot,
so that no GUI backend is needed and a notebook's pyplot state is left alone.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from cxrscreen.metrics.calibration import ReliabilityDiagram
from cxrscreen.io_utils import atomic_write


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())
    return Path(path)


def plot_confusion_matrix(confusion: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix (C, C) of counts, rows = true class, shaded by the share of each row."""
    confusion = np.asarray(confusion)
    row_share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.9 * len(classes)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.subplots()
    image = ax.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(col, row, f"{count}\n{row_share[row, col]:.0%}", ha="center", va="center",
                color="white" if row_share[row, col] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    return save_figure(fig, path)


def plot_roc_curves(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str = "",
    extra: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """One-vs-rest ROC curve of every class present with both outcomes in ``y_true`` (N,), ``probs`` (N, C).

    ``extra`` adds dashed curves from (boolean truth, score) pairs, e.g. COVID-vs-rest over every image.
    """
    curves = [(f"{name}", np.asarray(y_true) == i, probs[:, i], "-") for i, name in enumerate(classes)]
    curves += [(label, np.asarray(truth, dtype=bool), score, "--") for label, (truth, score) in (extra or {}).items()]
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    drawn = 0
    for label, positive, score, style in curves:
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, score)
        ax.plot(fpr, tpr, linestyle=style, label=f"{label} (AUC {auc(fpr, tpr):.3f}, n={int(positive.sum())})")
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no class has both positive and negative images", ha="center", va="center")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "ROC, one class vs the rest")
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_reliability(diagrams: dict[str, ReliabilityDiagram], path: str | Path, title: str = "") -> Path:
    """Reliability diagrams (e.g. ``{"T=1": ..., "T=1.7": ...}``) on one plot: accuracy against confidence."""
    fig = Figure(figsize=(5.5, 6.5))
    ax, ax_counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="calibrated")
    for label, diagram in diagrams.items():
        filled = diagram.counts > 0
        ax.plot(diagram.confidence[filled], diagram.accuracy[filled], marker="o", label=f"{label} (ECE {diagram.ece:.3f})")
        centres = (diagram.edges[:-1] + diagram.edges[1:]) / 2
        ax_counts.step(centres, diagram.counts, where="mid", label=label)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title or "reliability (top probability)")
    ax.legend(loc="upper left", fontsize=8)
    ax_counts.set_xlabel("confidence (top probability)")
    ax_counts.set_ylabel("images")
    return save_figure(fig, path)
