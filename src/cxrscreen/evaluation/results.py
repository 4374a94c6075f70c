"""What an evaluation found and how it is written: per collection the metrics, calibration and per-source rows
(:class:`CollectionResult`), the comparison of collections (:class:`EvaluationResult`), and the files of an
evaluation folder (``metrics.json``, figures and ``predictions.csv`` per collection, :func:`write_outputs`)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrscreen import SCREENING_NOTICE
from cxrscreen.evaluation import plots
from cxrscreen.io_utils import atomic_write, write_json
from cxrscreen.metrics.calibration import ReliabilityDiagram, brier_score, reliability_diagram
from cxrscreen.metrics.classification import BinaryMetrics, Interval, MulticlassMetrics, difference
from cxrscreen.run_dir import EVAL_METRICS, PREDICTIONS_CSV

POSITIVE = "covid"


@dataclass
class CalibrationSummary:
    """ECE (15 bins) and multiclass Brier score at T=1 and at the model's temperature, with their diagrams."""

    temperature: float
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    diagram_before: ReliabilityDiagram
    diagram_after: ReliabilityDiagram

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "ece_t1": _rounded(self.ece_before),
            "ece_scaled": _rounded(self.ece_after),
            "brier_t1": _rounded(self.brier_before),
            "brier_scaled": _rounded(self.brier_after),
            "reliability_scaled": self.diagram_after.to_dict(),
        }


@dataclass
class SourceResult:
    """Metrics of the images of one source (``Record.source``) inside a collection."""

    source: str
    n_images: int
    accuracy: Interval | None
    covid_vs_rest: BinaryMetrics | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_images": self.n_images,
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "covid_vs_rest": None if self.covid_vs_rest is None else self.covid_vs_rest.to_dict(),
        }


@dataclass
class CollectionResult:
    """The evaluation of one collection (or one side of the run's split).

    ``paths``, ``probs`` (N, C, temperature-scaled), ``targets`` (N,; -1 for images without a class) and
    ``is_covid`` (N,) are the per-image predictions behind the metrics; they are not part of :meth:`to_dict`.
    """

    name: str
    kind: str
    data: list[str]
    classes: list[str]
    n_listed: int
    left_out_near_duplicates: int | None
    dedup_distance: int
    unreadable: list[tuple[str, str]]
    without_class: dict[str, int]
    unknown_labels: dict[str, int]
    flagged_out_of_distribution: int | None
    multiclass: MulticlassMetrics | None
    covid_vs_rest: BinaryMetrics | None
    calibration: CalibrationSummary | None
    by_source: list[SourceResult]
    notes: list[str]
    paths: list[str] = field(default_factory=list, repr=False)
    sources: list[str] = field(default_factory=list, repr=False)
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    is_covid: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def n_evaluated(self) -> int:
        return len(self.paths)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "data": list(self.data),
            "images_listed": self.n_listed,
            "images_evaluated": self.n_evaluated,
            "left_out_near_duplicates": self.left_out_near_duplicates,
            "dedup_distance": self.dedup_distance,
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "without_model_class": dict(self.without_class),
            "unknown_labels": dict(self.unknown_labels),
            "flagged_out_of_distribution": self.flagged_out_of_distribution,
            "multiclass": None if self.multiclass is None else self.multiclass.to_dict(),
            "covid_vs_rest": None if self.covid_vs_rest is None else self.covid_vs_rest.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "by_source": [s.to_dict() for s in self.by_source],
            "notes": list(self.notes),
            "figures": dict(self.figures),
        }


COMPARED = (
    ("auroc", lambda r: r.covid_vs_rest and r.covid_vs_rest.auroc),
    ("sensitivity", lambda r: r.covid_vs_rest and r.covid_vs_rest.sensitivity),
    ("specificity", lambda r: r.covid_vs_rest and r.covid_vs_rest.specificity),
    ("macro_f1", lambda r: r.multiclass and r.multiclass.macro_f1),
)


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_model` measured: the first collection, the external ones, and where it wrote."""

    model: str
    model_name: str
    classes: list[str]
    temperature: float
    collections: list[CollectionResult]
    out_dir: Path | None
    n_resamples: int
    seed: int

    @property
    def primary(self) -> CollectionResult:
        return self.collections[0]

    @property
    def external(self) -> list[CollectionResult]:
        return self.collections[1:]

    def comparison(self) -> list[dict[str, Any]]:
        """Per collection: COVID-vs-rest AUROC, sensitivity, specificity and macro-F1 (Intervals), and each one's
        drop from the first collection (first minus this one, with a bootstrap interval)."""
        rows = []
        for result in self.collections:
            row: dict[str, Any] = {"name": result.name, "images": result.n_evaluated}
            for metric, get in COMPARED:
                value, reference = get(result), get(self.primary)
                row[metric] = value or None
                row[f"{metric}_drop"] = difference(reference, value) if value and reference and result is not self.primary else None
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        comparison = [
            {k: (v.to_dict() if isinstance(v, Interval) else v) for k, v in row.items()} for row in self.comparison()
        ]
        return {
            "notice": SCREENING_NOTICE,
            "model": self.model,
            "model_name": self.model_name,
            "classes": list(self.classes),
            "temperature": self.temperature,
            "bootstrap": {"resamples": self.n_resamples, "seed": self.seed, "level": 0.95},
            "collections": [c.to_dict() for c in self.collections],
            "comparison": comparison if self.external else None,
        }


def _rounded(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def calibration_summary(probs_t1: np.ndarray, probs_scaled: np.ndarray, targets: np.ndarray, temperature: float) -> CalibrationSummary:
    """ECE and Brier score before (T=1) and after temperature scaling, for images with a class."""
    before, after = reliability_diagram(probs_t1, targets), reliability_diagram(probs_scaled, targets)
    return CalibrationSummary(
        temperature=temperature,
        ece_before=before.ece,
        ece_after=after.ece,
        brier_before=brier_score(probs_t1, targets),
        brier_after=brier_score(probs_scaled, targets),
        diagram_before=before,
        diagram_after=after,
    )


def write_predictions_csv(result: CollectionResult, path: Path) -> None:
    """One row per evaluated image: path, source, class (empty when none), covid, p_<class>..."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "source", "class", "covid", *[f"p_{c}" for c in result.classes]])
    for i, path_text in enumerate(result.paths):
        target = result.targets[i]
        writer.writerow([path_text, result.sources[i], "" if target < 0 else result.classes[target],
                         int(result.is_covid[i]), *[repr(float(p)) for p in result.probs[i]]])
    with atomic_write(path, "w") as fh:
        fh.write(buffer.getvalue())


def write_outputs(result: EvaluationResult, out_dir: Path) -> None:
    """metrics.json, and per collection the figures and predictions.csv (external ones in a subfolder)."""
    used: set[str] = set()
    for index, collection in enumerate(result.collections):
        folder = out_dir
        if index:
            name = slug(collection.data[0])
            while name in used:
                name += "_"
            used.add(name)
            folder = out_dir / name
        figures = {}
        title = f"{result.model_name} on {collection.name}"
        if collection.multiclass is not None:
            mapped = collection.targets >= 0
            figures["confusion_matrix"] = plots.plot_confusion_matrix(
                collection.multiclass.confusion, collection.classes, folder / "confusion_matrix.png", title)
            extra = None
            if POSITIVE in collection.classes:
                covid_score = collection.probs[:, collection.classes.index(POSITIVE)]
                extra = {"covid vs rest, all images": (collection.is_covid, covid_score)}
            figures["roc"] = plots.plot_roc_curves(collection.targets[mapped], collection.probs[mapped],
                                                   collection.classes, folder / "roc.png", title, extra)
        if collection.calibration is not None:
            cal = collection.calibration
            figures["reliability"] = plots.plot_reliability(
                {"T=1": cal.diagram_before, f"T={cal.temperature:.2f}": cal.diagram_after}, folder / "reliability.png", title)
        figures["predictions"] = folder / PREDICTIONS_CSV
        write_predictions_csv(collection, figures["predictions"])
        collection.figures = {k: str(v) for k, v in figures.items()}
    write_json(out_dir / EVAL_METRICS, result.to_dict())


def slug(text: str) -> str:
    """A file-name-safe name for a collection path."""
    name = Path(text.rstrip("/\\")).name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"
