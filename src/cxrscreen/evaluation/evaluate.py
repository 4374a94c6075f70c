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

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, hash_files, leave_out_near_duplicates
from cxrscreen.data.imageio import to_float
from cxrscreen.data.labels import CLASS_GROUPS, OTHER, LabelSet
from cxrscreen.data.records import Record
from cxrscreen.data.sources import check_exists, load_dataset, scan_paths, task_class
from cxrscreen.data.splits import load_split_of, split_paths
from cxrscreen.data.stack import ImageStack
from cxrscreen.errors import ConfigError, DatasetLayoutError
from cxrscreen.evaluation.results import (
    POSITIVE,
    CollectionResult,
    EvaluationResult,
    SourceResult,
    calibration_summary,
    write_outputs,
)
from cxrscreen.guard.inputs import guard_preprocessing
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.lungs.finder import load_lung_finder
from cxrscreen.metrics.calibration import rescale_temperature
from cxrscreen.metrics.classification import BinaryMetrics, class_vs_rest, multiclass_metrics
from cxrscreen.run_dir import RunDir

SPLIT_CHOICES = ("test", "val", "train", "all")
PREDICT_CHUNK = 256


@dataclass
class EvaluationConfig:
    """What to evaluate and how; the CLI maps its flags onto these fields.

    ``model``: run directory, checkpoint file or None (the bundled default). ``data``: collections (evaluated
    together); empty means the data the run was trained on. ``classes``: evaluate on these classes (e.g.
    ``covid,other``) by summing the probabilities of the model's classes that fall into each; None = the model's.
    ``out``: output folder (default ``RUN/eval`` for a run directory; nothing is written for a file without it).
    ``backend``: where the classifier runs (:data:`cxrscreen.inference.options.BACKENDS`); callers that need the torch
    network anyway (fine-tuning, Grad-CAM) pass ``torch`` so that no ONNX graph is exported for nothing.
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
    dedup_distance: int = DEFAULT_MAX_DISTANCE
    progress: bool = True
    label_map: dict[str, str] = field(default_factory=dict)
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.split not in SPLIT_CHOICES:
            raise ConfigError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {self.split!r}")
        if self.n_resamples < 0:
            raise ConfigError(f"--bootstrap must be 0 or more, got {self.n_resamples}")
        if not 0 <= self.dedup_distance <= 64:
            raise ConfigError(f"--dedup-distance must be between 0 and 64 bits, got {self.dedup_distance}")


def find_run_dir(model: str | None) -> Path | None:
    """The run directory of a model argument: the directory itself, or the folder of a ``best.pt`` beside a split."""
    if model is None:
        return None
    path = Path(model)
    if path.is_dir():
        return path
    if path.is_file() and RunDir(path.parent).split.is_file():
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


@dataclass
class Selection:
    """The images chosen for an evaluation: ``records``, under ``name`` and ``kind`` (internal / external /
    collection), out of ``n_listed``; ``left_out`` near-duplicates of training images (None when not checked),
    ``dropped`` labels without a class, one-line ``notes``, and the pHash of each listed image where the
    near-duplicate check computed it (``hashes``, path -> hex; empty when it did not run)."""

    records: list[Record]
    name: str
    kind: str
    n_listed: int
    left_out: int | None
    dropped: Counter
    notes: list[str]
    hashes: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedImages:
    """The prepared inputs of the readable files among those asked for: ``images`` uint8 (N_ok, S, S) of
    ``paths[ok]``, the OOD guard's ``thumbnails`` uint8 (N_ok, 64, 64) or None, both on disk and read a batch at
    a time (:class:`~cxrscreen.data.stack.ImageStack`); ``errors`` (path, reason)."""

    ok: list[int]
    errors: list[tuple[str, str]]
    images: ImageStack
    thumbnails: ImageStack | None


def nothing_left_because(n_listed: int, left_out: int | None, unknown_labels: Counter, distance: int) -> str:
    """Why a collection left no image to evaluate: how many were listed, left out as near-duplicates of the
    training images, or carried labels without a class (with the flag that maps them)."""
    reasons = []
    if left_out:
        reasons.append(f"{left_out} of the {n_listed} image(s) are near-duplicates of the model's training images "
                       f"(pHash distance <= {distance} of 64 bits) and were left out, as scores on them would "
                       "flatter the model; evaluate images it was not trained on")
    elif not n_listed:
        reasons.append("no image listed")
    if unknown_labels:
        counts = ", ".join(f"{label} {n}" for label, n in unknown_labels.most_common())
        reasons.append(f"labels without a class: {counts} (--label-map LABEL=CLASS maps one onto a class)")
    return "; ".join(reasons)


class Evaluator:
    """Evaluates collections with one loaded predictor; :func:`evaluate_model` builds and runs it."""

    def __init__(self, cfg: EvaluationConfig):
        self.cfg = cfg
        for path in [*cfg.data, *cfg.external]:  # a missing path fails before a model loads
            check_exists(path)
        self.predictor = load_predictor(cfg.model, backend=cfg.backend)
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
        if self.run_dir is None or not RunDir(self.run_dir).split.is_file():
            return None
        return RunDir(self.run_dir).split

    def run(self) -> EvaluationResult:
        data = list(self.cfg.data) or self.train_data
        if not data:
            raise ConfigError("--data is required: the model does not name the data it was trained on")
        collections = [self.evaluate_collection(data, "data")]
        collections += [self.evaluate_collection([path], "external") for path in self.cfg.external]
        out_dir = Path(self.cfg.out) if self.cfg.out else (RunDir(self.run_dir).eval_dir if self.run_dir else None)
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

    def select_records(self, paths: list[str], role: str = "data", label_set: LabelSet | None = None,
                       frontal_only: bool = True) -> Selection:
        """The images of ``paths`` to evaluate (also used by the shortcut audit and by adapt): the run's split side
        ``cfg.split`` when ``paths`` are its training data (role ``data``), else every image (frontal views only
        unless ``frontal_only`` is False) with a class of ``label_set`` (default: every known finding, as
        covid-vs-other), less near-duplicates of the model's training images."""
        trained_on = self.is_training_data(paths)
        if role == "data" and trained_on and self.split_file is not None and self.cfg.split != "all":
            records, name, dropped, notes = self.split_side(paths)
            return Selection(records, name, "internal", len(records), None, dropped, notes)
        dataset = load_dataset(paths, label_set or all_findings_label_set(self.label_map), frontal_only=frontal_only,
                               allow_missing_classes=True)
        records = list(dataset.records)
        notes = list(dataset.notes)
        notes.extend(f"excluded by the source: {n} {reason}" for reason, n in dataset.excluded.most_common())
        left_out: int | None = None
        hashes: dict[str, str] = {}
        if trained_on and self.cfg.split == "all":
            notes.append("includes the images the model was trained on (--split all on its training data)")
        elif self.meta.train_hashes:
            hashes = hash_files([r.path for r in records], progress=self.cfg.progress).hashes
            records, left_out = leave_out_near_duplicates(records, hashes, self.meta.train_hashes, self.cfg.dedup_distance)
        else:
            notes.append("the model stores no training-image hashes: near-duplicates of its training images could not be left out")
        if trained_on and self.cfg.split != "all" and self.split_file is None:
            notes.append("no split.csv for this model: evaluated every image that is not a near-duplicate of a training image")
        kind = "internal" if trained_on else "external" if role == "external" else "collection"
        return Selection(records, ", ".join(paths), kind, len(dataset.records), left_out, dataset.dropped, notes, hashes)

    def is_training_data(self, paths: list[str]) -> bool:
        """Whether ``paths`` are the model's training data: the same folders, or images listed in the run's split."""
        if self.train_data and same_paths(paths, self.train_data):
            return True
        if self.split_file is None:
            return False
        in_split = split_paths(self.split_file)
        return any(record.path in in_split for record in scan_paths(paths)[0].records)

    def split_side(self, paths: list[str]) -> tuple[list[Record], str, Counter, list[str]]:
        """The records of the run's split side ``cfg.split``, loaded as the training run loaded them."""
        dataset = load_dataset(paths, self.meta.label_set, frontal_only=self.train_frontal_only, allow_missing_classes=True)
        split, unused = load_split_of(self.split_file, dataset, ", ".join(paths))
        records = [r for r, side in zip(split.dataset.records, split.assignment) if side == self.cfg.split]
        notes = list(dataset.notes)
        if unused:
            notes.append(f"{unused} image(s) of --data are not in the run's split (not used by the run) and were not evaluated")
        notes.append(f"{self.cfg.split} side of the run's split ({len(split.dataset.records)} images in all sides)")
        return records, f"internal {self.cfg.split} split", dataset.dropped, notes

    # -- measuring --------------------------------------------------------------------------------------------
    def load(self, paths: list[str], thumbnails: bool | None = None) -> LoadedImages:
        """Each of ``paths`` read, decoded and prepared once (through the prepared-image cache), with the OOD
        guard's thumbnails from the same pass when ``thumbnails`` (default: when the model's guard reads them)."""
        if thumbnails is None:
            thumbnails = self.predictor.guard_reads_whole_image
        also = [guard_preprocessing()] if thumbnails else []
        prepared = load_prepared(paths, self.meta.preprocessing, progress=self.cfg.progress, also=also,
                                 lungs=load_lung_finder())
        return LoadedImages(prepared.ok, prepared.errors, prepared.images, prepared.also[0] if also else None)

    def predict_arrays(self, images: np.ndarray | ImageStack, thumbnails: np.ndarray | ImageStack | None = None
                       ) -> tuple[np.ndarray, int | None]:
        """Model probabilities (N, C_model) of prepared uint8 ``images`` (N, S, S) and the number the OOD guard
        flags (None without a guard); ``thumbnails`` uint8 (N, 64, 64) when the guard reads whole images."""
        probs, flagged = [], 0
        for start in range(0, len(images), PREDICT_CHUNK):
            chunk = to_float(images[start : start + PREDICT_CHUNK])
            thumbs = None if thumbnails is None else to_float(thumbnails[start : start + PREDICT_CHUNK])
            outputs = self.predictor.predict_prepared(chunk, thumbs)
            probs.append(outputs.probs)
            accepted, _ = self.predictor.ood_check(outputs)
            flagged += int((~accepted).sum())
        all_probs = np.concatenate(probs) if probs else np.zeros((0, len(self.meta.classes)))
        return all_probs, flagged if self.meta.ood else None

    def predict(self, paths: list[str]) -> tuple[list[int], list[tuple[str, str]], np.ndarray, int | None]:
        """Model probabilities (N_ok, C_model) for the readable ``paths`` -> (ok indices, unreadable, probs,
        number flagged out of distribution or None without a guard)."""
        loaded = self.load(paths)
        probs, flagged = self.predict_arrays(loaded.images, loaded.thumbnails)
        return loaded.ok, loaded.errors, probs, flagged

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
            raise DatasetLayoutError(f"{name}: no image left to evaluate: "
                                     + nothing_left_because(n_listed, left_out, unknown_labels, self.cfg.dedup_distance))
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


def evaluate_model(cfg: EvaluationConfig | None = None, **kwargs: Any) -> EvaluationResult:
    """Evaluate a model as ``cfg`` (or the keyword arguments of :class:`EvaluationConfig`) says.

    Example (notebook): ``evaluate_model(model="runs/r1", external=["data/covid-chestxray-dataset"]).to_dict()``.
    """
    if cfg is None:
        cfg = EvaluationConfig(**kwargs)
    elif kwargs:
        raise ConfigError("pass either an EvaluationConfig or keyword arguments, not both")
    return Evaluator(cfg).run()
