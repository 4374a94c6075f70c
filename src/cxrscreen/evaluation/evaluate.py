"""Evaluate a trained classifier honestly: on its own test split, on other collections, per source.

:func:`evaluate_model` is what ``cxrscreen evaluate`` runs:

- the model is a run directory (``RUN/best.pt`` with ``RUN/split.csv``), a checkpoint file or the bundled default;
- ``data`` that the run was trained on is evaluated on the split side asked for (default ``test``); any other
  collection (or ``split="all"``) is evaluated on all its images, after leaving out near-duplicates of the
  model's training images (``ModelMeta.train_hashes``), and their number is reported;
- a collection's findings are mapped onto the model's classes (or ``classes``): images with a class get the
  multiclass metrics and calibration, and every image counts in the COVID-vs-rest view (covid or not);
- ``external`` collections are evaluated the same way and compared with the first one, drop included;
- ``by_source`` adds metrics per source, with the COVID-vs-rest AUROC inside each source that has both outcomes.

Predictions come from the :class:`~cxrscreen.inference.predictor.Predictor` (temperature-scaled probabilities);
metrics carry 95% bootstrap intervals that resample patients where the source names them.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrscreen import SCREENING_NOTICE
from cxrscreen.data.cache import load_prepared
from cxrscreen.data.imageio import to_float
from cxrscreen.data.dedup import hash_files, leave_out_near_duplicates
from cxrscreen.data.labels import CLASS_GROUPS, OTHER, LabelSet
from cxrscreen.data.records import Record
from cxrscreen.data.sources import load_dataset, scan_paths, task_class
from cxrscreen.data.sources.base import read_csv_rows
from cxrscreen.data.splits import load_split
from cxrscreen.errors import ConfigError, DatasetLayoutError
from cxrscreen.evaluation import plots
from cxrscreen.metrics.calibration import (
    ReliabilityDiagram,
    brier_score,
    reliability_diagram,
    rescale_temperature,
)
from cxrscreen.metrics.classification import (
    BinaryMetrics,
    Interval,
    MulticlassMetrics,
    class_vs_rest,
    difference,
    multiclass_metrics,
)
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.lungs.finder import segmenter_lungs
from cxrscreen.guard.network import guard_preprocessing
from cxrscreen.io_utils import atomic_write, write_json

SPLIT_CHOICES = ("test", "val", "train", "all")
SPLIT_FILE = "split.csv"
POSITIVE = "covid"
PREDICT_CHUNK = 256


@dataclass
class EvaluationConfig:
    """What to evaluate and how; the CLI maps its flags onto these fields.

    ``model``: run directory, checkpoint file or None (the bundled default). ``data``: collections (evaluated
    together); empty means the data the run was trained on. ``classes``: evaluate on these classes (e.g.
    ``covid,other``) by summing the probabilities of the model's classes that fall into each; None = the model's.
    ``out``: output folder (default ``RUN/eval`` for a run directory; nothing is written for a file without it).
    """

    data: list[str] = field(default_factory=list)
    model: str | None = None
    split: str = "test"
    external: list[str] = field(default_factory=list)
    by_source: bool = False
    classes: str | None = None
    out: str | None = None
    n_resamples: int = 1000
    seed: int = 0
    dedup_distance: int = 6
    progress: bool = True
    label_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in SPLIT_CHOICES:
            raise ConfigError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {self.split!r}")
        if self.n_resamples < 0:
            raise ConfigError(f"--bootstrap must be 0 or more, got {self.n_resamples}")
        if not 0 <= self.dedup_distance <= 64:
            raise ConfigError(f"--dedup-distance must be between 0 and 64 bits, got {self.dedup_distance}")


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


def find_run_dir(model: str | None) -> Path | None:
    """The run directory of a model argument: the directory itself, or the folder of a ``best.pt`` beside a split."""
    if model is None:
        return None
    path = Path(model)
    if path.is_dir():
        return path
    if path.is_file() and (path.parent / SPLIT_FILE).is_file():
        return path.parent
    return None


def evaluation_label_set(model_classes: Sequence[str], label_map: dict[str, str], classes: str | None) -> LabelSet:
    """The classes to evaluate on: the model's, or ``classes`` (``--classes``) when given."""
    if classes is None:
        return LabelSet(tuple(model_classes), dict(label_map))
    return LabelSet.parse(classes, label_map)


def class_merge_matrix(model_classes: Sequence[str], label_set: LabelSet) -> np.ndarray:
    """(C_model, C_eval) 0/1 matrix sending each model class to the evaluation class its findings fall into.

    Raises :class:`ConfigError` when a model class spreads over several evaluation classes (or none) or an
    evaluation class receives no model class: such a relabelling would need probabilities the model lacks.
    """
    matrix = np.zeros((len(model_classes), len(label_set.classes)))
    for row, name in enumerate(model_classes):
        if name in label_set.classes:
            targets = {name}
        else:
            findings = CLASS_GROUPS.get(name, frozenset() if name == OTHER else frozenset({name}))
            targets = {label_set.class_of(finding) for finding in findings}
        if len(targets) != 1 or None in targets:
            raise ConfigError(
                f"--classes {','.join(label_set.classes)}: the model's class {name!r} does not fall into exactly one of them"
            )
        matrix[row, label_set.classes.index(targets.pop())] = 1.0
    empty = [c for c, used in zip(label_set.classes, matrix.sum(axis=0)) if not used]
    if empty:
        raise ConfigError(f"--classes: no class of the model ({', '.join(model_classes)}) falls into {', '.join(empty)}")
    return matrix


def all_findings_label_set(label_map: dict[str, str]) -> LabelSet:
    """A covid-vs-other task that keeps every image with a known finding (and the model's extra labels)."""
    extra = {raw: (POSITIVE if target == POSITIVE else OTHER) for raw, target in label_map.items()}
    return LabelSet((POSITIVE, OTHER), extra)


def same_paths(a: Sequence[str], b: Sequence[str]) -> bool:
    return {os.path.realpath(p) for p in a} == {os.path.realpath(p) for p in b}


def slug(text: str) -> str:
    """A file-name-safe name for a collection path."""
    name = Path(text.rstrip("/\\")).name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


@dataclass
class Selection:
    """The images chosen for an evaluation: ``records``, under ``name`` and ``kind`` (internal / external /
    collection), out of ``n_listed``; ``left_out`` near-duplicates of training images (None when not checked),
    ``dropped`` labels without a class, and one-line ``notes``."""

    records: list[Record]
    name: str
    kind: str
    n_listed: int
    left_out: int | None
    dropped: Counter
    notes: list[str]


class Evaluator:
    """Evaluates collections with one loaded predictor; :func:`evaluate_model` builds and runs it."""

    def __init__(self, cfg: EvaluationConfig):
        self.cfg = cfg
        self.predictor = load_predictor(cfg.model)
        self.meta = self.predictor.meta
        self.run_dir = find_run_dir(cfg.model)
        # The user's --label-map adds to (and overrides) the mapping the model was trained with.
        self.label_map = {**self.meta.label_map, **cfg.label_map}
        self.label_set = evaluation_label_set(self.meta.classes, self.label_map, cfg.classes)
        self.merge = class_merge_matrix(self.meta.classes, self.label_set)
        train_cfg = self.meta.config or {}
        self.train_data: list[str] = list(train_cfg.get("data") or self.meta.train_summary.get("data") or [])
        self.train_frontal_only = bool(train_cfg.get("frontal_only", True))

    @property
    def split_file(self) -> Path | None:
        if self.run_dir is None or not (self.run_dir / SPLIT_FILE).is_file():
            return None
        return self.run_dir / SPLIT_FILE

    def run(self) -> EvaluationResult:
        data = list(self.cfg.data) or self.train_data
        if not data:
            raise ConfigError("--data is required: the model does not name the data it was trained on")
        collections = [self.evaluate_collection(data, "data")]
        collections += [self.evaluate_collection([path], "external") for path in self.cfg.external]
        out_dir = Path(self.cfg.out) if self.cfg.out else (self.run_dir / "eval" if self.run_dir else None)
        result = EvaluationResult(
            model=str(self.predictor.model_path),
            model_name=f"{self.meta.name} v{self.meta.version}",
            classes=list(self.label_set.classes),
            temperature=float(self.meta.temperature),
            collections=collections,
            out_dir=out_dir,
            n_resamples=self.cfg.n_resamples,
            seed=self.cfg.seed,
        )
        if out_dir is not None:
            write_outputs(result, out_dir)
        return result

    # -- choosing the images ----------------------------------------------------------------------------------
    def evaluate_collection(self, paths: list[str], role: str) -> CollectionResult:
        """Evaluate ``paths`` together: the run's split side when they are its training data, else all images."""
        chosen = self.select_records(paths, role)
        return self.evaluate_records(chosen.name, chosen.kind, paths, chosen.records, chosen.n_listed, chosen.left_out,
                                     chosen.dropped, chosen.notes)

    def select_records(self, paths: list[str], role: str = "data") -> Selection:
        """The images of ``paths`` to evaluate (also used by the shortcut audit): the run's split side ``cfg.split``
        when ``paths`` are its training data (role ``data``), else every image, less near-duplicates of the model's
        training images."""
        trained_on = self.is_training_data(paths)
        if role == "data" and trained_on and self.split_file is not None and self.cfg.split != "all":
            records, name, dropped, notes = self.split_side(paths)
            return Selection(records, name, "internal", len(records), None, dropped, notes)
        dataset = load_dataset(paths, all_findings_label_set(self.label_map), allow_missing_classes=True)
        records = list(dataset.records)
        notes = list(dataset.notes)
        notes.extend(f"excluded by the source: {n} {reason}" for reason, n in dataset.excluded.most_common())
        left_out: int | None = None
        if trained_on and self.cfg.split == "all":
            notes.append("includes the images the model was trained on (--split all on its training data)")
        elif self.meta.train_hashes:
            records, left_out = self.without_training_duplicates(records)
        else:
            notes.append("the model stores no training-image hashes: near-duplicates of its training images could not be left out")
        if trained_on and self.cfg.split != "all" and self.split_file is None:
            notes.append(f"no {SPLIT_FILE} for this model: evaluated every image that is not a near-duplicate of a training image")
        kind = "internal" if trained_on else "external" if role == "external" else "collection"
        return Selection(records, ", ".join(paths), kind, len(dataset.records), left_out, dataset.dropped, notes)

    def is_training_data(self, paths: list[str]) -> bool:
        """Whether ``paths`` are the model's training data: the same folders, or images listed in the run's split."""
        if self.train_data and same_paths(paths, self.train_data):
            return True
        if self.split_file is None:
            return False
        in_split = self.split_paths()
        return any(record.path in in_split for record in scan_paths(paths)[0].records)

    def split_side(self, paths: list[str]) -> tuple[list[Record], str, Counter, list[str]]:
        """The records of the run's split side ``cfg.split``, loaded as the training run loaded them."""
        dataset = load_dataset(paths, self.meta.label_set, frontal_only=self.train_frontal_only, allow_missing_classes=True)
        in_split = self.split_paths()
        listed = [i for i, record in enumerate(dataset.records) if record.path in in_split]
        if not listed:
            raise DatasetLayoutError(f"{self.split_file}: none of the images of {', '.join(paths)} is in the run's split")
        split = load_split(self.split_file, dataset.subset(listed))
        records = [r for r, side in zip(split.dataset.records, split.assignment) if side == self.cfg.split]
        notes = list(dataset.notes)
        unused = len(dataset.records) - len(listed)
        if unused:
            notes.append(f"{unused} image(s) of --data are not in the run's split (not used by the run) and were not evaluated")
        notes.append(f"{self.cfg.split} side of the run's split ({len(listed)} images in all sides)")
        return records, f"internal {self.cfg.split} split", dataset.dropped, notes

    def split_paths(self) -> set[str]:
        return {row["path"] for row in read_csv_rows(self.split_file, ("path", "split"))}

    def without_training_duplicates(self, records: list[Record]) -> tuple[list[Record], int]:
        hashes = hash_files([r.path for r in records], progress=self.cfg.progress).hashes
        return leave_out_near_duplicates(records, hashes, self.meta.train_hashes, self.cfg.dedup_distance)

    # -- measuring --------------------------------------------------------------------------------------------
    def predict(self, paths: list[str]) -> tuple[list[int], list[tuple[str, str]], np.ndarray, int | None]:
        """Model probabilities (N_ok, C_model) for the readable ``paths`` -> (ok indices, unreadable, probs,
        number flagged out of distribution or None without a guard)."""
        guard_pp = [guard_preprocessing()] if self.predictor.guard_reads_whole_image else []
        # The guard's thumbnails come from the same pass as the classifier's inputs: each file read once.
        prepared = load_prepared(paths, self.meta.preprocessing, progress=self.cfg.progress, also=guard_pp,
                                 lungs=segmenter_lungs())
        thumbnails = to_float(prepared.also[0]) if guard_pp else None
        probs, flagged = [], 0
        for start in range(0, len(prepared.images), PREDICT_CHUNK):
            chunk = to_float(prepared.images[start : start + PREDICT_CHUNK])
            thumbs = None if thumbnails is None else thumbnails[start : start + PREDICT_CHUNK]
            outputs = self.predictor.predict_prepared(chunk, thumbs)
            probs.append(outputs.probs)
            accepted, _ = self.predictor.ood_check(outputs)
            flagged += int((~accepted).sum())
        all_probs = np.concatenate(probs) if probs else np.zeros((0, len(self.meta.classes)))
        return prepared.ok, prepared.errors, all_probs, flagged if self.meta.ood else None

    def evaluate_records(
        self,
        name: str,
        kind: str,
        paths: list[str],
        records: list[Record],
        n_listed: int,
        left_out: int | None,
        unknown_labels: Counter,
        notes: list[str],
    ) -> CollectionResult:
        if not records:
            raise DatasetLayoutError(f"{name}: no image left to evaluate")
        ok, unreadable, model_probs, flagged = self.predict([r.path for r in records])
        records = [records[i] for i in ok]
        if not records:
            raise DatasetLayoutError(f"{name}: none of the {len(ok) + len(unreadable)} images could be read")
        temperature = float(self.meta.temperature)
        probs = model_probs @ self.merge
        probs_t1 = rescale_temperature(model_probs, temperature, 1.0) @ self.merge
        classes = list(self.label_set.classes)
        eval_class = [task_class(r, self.label_set) for r in records]
        targets = np.array([-1 if c is None else classes.index(c) for c in eval_class], dtype=np.int64)
        binary_set = all_findings_label_set(self.label_map)
        is_covid = np.array([task_class(r, binary_set) == POSITIVE for r in records])
        groups = [r.group_key for r in records]
        with_class = targets >= 0
        multiclass = calibration = None
        if with_class.any():
            multiclass = multiclass_metrics(targets[with_class], probs[with_class], classes, self.cfg.n_resamples,
                                            self.cfg.seed, [g for g, keep in zip(groups, with_class) if keep])
            calibration = calibration_summary(probs_t1[with_class], probs[with_class], targets[with_class], temperature)
        covid = self.covid_view(probs, is_covid, groups) if POSITIVE in classes else None
        without_class = Counter(r.label for r, c in zip(records, eval_class) if c is None)
        by_source = self.per_source(records, probs, targets, is_covid, groups) if self.cfg.by_source else []
        return CollectionResult(
            name=name, kind=kind, data=list(paths), classes=classes, n_listed=n_listed, left_out_near_duplicates=left_out,
            dedup_distance=self.cfg.dedup_distance,
            unreadable=unreadable, without_class=dict(without_class), unknown_labels=dict(unknown_labels),
            flagged_out_of_distribution=flagged, multiclass=multiclass, covid_vs_rest=covid, calibration=calibration,
            by_source=by_source, notes=notes, paths=[r.path for r in records], sources=[r.source for r in records],
            probs=probs, targets=targets, is_covid=is_covid,
        )

    def covid_view(self, probs: np.ndarray, is_covid: np.ndarray, groups: list[str]) -> BinaryMetrics:
        return class_vs_rest(is_covid, probs, self.label_set.classes, POSITIVE, n_resamples=self.cfg.n_resamples,
                             seed=self.cfg.seed, groups=groups)

    def per_source(
        self, records: list[Record], probs: np.ndarray, targets: np.ndarray, is_covid: np.ndarray, groups: list[str]
    ) -> list[SourceResult]:
        """Accuracy (images with a class) and the COVID-vs-rest view inside each source."""
        out = []
        for source in sorted({r.source for r in records}):
            rows = np.array([r.source == source for r in records])
            mapped = rows & (targets >= 0)
            accuracy = None
            if mapped.any():
                accuracy = multiclass_metrics(targets[mapped], probs[mapped], self.label_set.classes, self.cfg.n_resamples,
                                              self.cfg.seed, [g for g, keep in zip(groups, mapped) if keep]).accuracy
            covid = None
            if POSITIVE in self.label_set.classes:
                covid = self.covid_view(probs[rows], is_covid[rows], [g for g, keep in zip(groups, rows) if keep])
            out.append(SourceResult(source, int(rows.sum()), accuracy, covid))
        return out


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
        figures["predictions"] = folder / "predictions.csv"
        write_predictions_csv(collection, figures["predictions"])
        collection.figures = {k: str(v) for k, v in figures.items()}
    write_json(out_dir / "metrics.json", result.to_dict())


def evaluate_model(cfg: EvaluationConfig | None = None, **kwargs: Any) -> EvaluationResult:
    """Evaluate a model as ``cfg`` (or the keyword arguments of :class:`EvaluationConfig`) says.

    Example (notebook): ``evaluate_model(model="runs/r1", external=["data/covid-chestxray-dataset"]).to_dict()``.
    """
    if cfg is None:
        cfg = EvaluationConfig(**kwargs)
    elif kwargs:
        raise ConfigError("pass either an EvaluationConfig or keyword arguments, not both")
    return Evaluator(cfg).run()
