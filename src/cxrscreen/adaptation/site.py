"""The site's labelled images, chosen as ``evaluate`` chooses them, and the parent model's view of them.

:func:`load_site` asks :class:`~cxrscreen.evaluation.evaluate.Evaluator` for the images (near-duplicates of the
parent's training images left out and counted) and the parent's temperature-scaled probabilities, maps the labels
onto the site's classes (:mod:`cxrscreen.data.labels`, through the evaluator's label set), and prepares every
image once (the prepared-image cache) for fine-tuning, with the OOD guard's thumbnails from the same pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cxrscreen.adaptation.config import MIN_IMAGES_PER_CLASS, AdaptConfig
from cxrscreen.data.cache import load_prepared
from cxrscreen.data.dedup import hash_files
from cxrscreen.data.records import Record
from cxrscreen.data.sources import load_dataset, task_class
from cxrscreen.data.splits import record_groups
from cxrscreen.errors import ConfigError, DatasetLayoutError
from cxrscreen.evaluation.evaluate import EvaluationConfig, Evaluator
from cxrscreen.guard.inputs import guard_preprocessing
from cxrscreen.lungs.finder import segmenter_lungs


@dataclass
class SiteData:
    """The images adaptation uses: ``records`` with ``targets`` (indices into ``classes``), prepared ``images``
    (uint8 (N, S, S)) and guard ``thumbnails`` (uint8 (N, 64, 64)), leakage ``groups`` (N,), pHashes, and the
    parent's probabilities on the site's classes (``parent_probs`` (N, C), its temperature applied)."""

    where: str
    classes: list[str]
    records: list[Record]
    targets: np.ndarray
    images: np.ndarray
    thumbnails: np.ndarray
    groups: np.ndarray
    hashes: dict[str, str]
    parent_probs: np.ndarray
    ood_flagged: int | None
    n_listed: int
    left_out: int | None
    without_class: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def class_counts(self) -> dict[str, int]:
        return {name: int((self.targets == i).sum()) for i, name in enumerate(self.classes)}

    @property
    def patients_known(self) -> int:
        return sum(1 for r in self.records if r.patient_id)

    def summary(self, data: list[str]) -> dict:
        """The site-data summary stored in the adapted checkpoint (the shape of a training run's summary)."""
        return {
            "data": list(data),
            "classes": list(self.classes),
            "images_per_split": {"site (all folds)": self.class_counts},
            "sources": dict(Counter(r.source for r in self.records).most_common()),
            "patients_known": self.patients_known,
            "dropped_labels": dict(self.without_class),
            "left_out_near_duplicates": self.left_out,
            "bad_images": len(self.unreadable),
            "split_rule": "cross-validation folds by patient and near-duplicate group, stratified by class; "
                          "final model fine-tuned on every image",
        }


def site_evaluator(cfg: AdaptConfig) -> Evaluator:
    """The evaluator of the parent model on the site: every image (``split=all``), the site's classes."""
    return Evaluator(EvaluationConfig(data=list(cfg.data), model=cfg.model, split="all", classes=cfg.classes,
                                      label_map=dict(cfg.label_map), dedup_distance=cfg.dedup_distance,
                                      n_resamples=cfg.n_resamples, seed=cfg.seed, progress=cfg.progress))


def check_classes(where: str, counts: dict[str, int], positive: str) -> list[str]:
    """Refuse a site adaptation cannot learn from (one line each); returns notes about classes without images."""
    present = [name for name, n in counts.items() if n]
    found = ", ".join(f"{name} {n}" for name, n in counts.items())
    if len(present) < 2:
        raise DatasetLayoutError(f"{where}: only one class has images ({found}); adaptation needs at least two")
    few = [f"{name} {n}" for name, n in counts.items() if 0 < n < MIN_IMAGES_PER_CLASS]
    if few:
        raise DatasetLayoutError(f"{where}: fewer than {MIN_IMAGES_PER_CLASS} images in class {', '.join(few)}; "
                                 "label more, or merge it into another with --classes/--label-map")
    if positive not in counts:
        raise ConfigError(f"--positive {positive}: not one of the site's classes ({', '.join(counts)})")
    if not counts[positive]:
        raise DatasetLayoutError(f"{where}: no image of the positive class {positive} ({found}); choose another "
                                 "with --positive")
    return [f"class {name} has no image at the site: the model keeps it, fine-tuning only makes it less likely"
            for name, n in counts.items() if not n]


def load_site(cfg: AdaptConfig, evaluator: Evaluator, log: Callable[[str], None]) -> SiteData:
    """The site's images with a class, prepared, and the parent's probabilities on them (see the module doc)."""
    where = ", ".join(cfg.data)
    label_set = evaluator.label_set
    # Says, in one line naming the site's classes, when no label of the site maps onto them.
    load_dataset(list(cfg.data), label_set, frontal_only=cfg.frontal_only, allow_missing_classes=True)
    selection = evaluator.select_records(list(cfg.data), "data")
    classes = list(label_set.classes)
    named = [(r, task_class(r, label_set)) for r in selection.records]
    records = [r for r, name in named if name is not None]
    without_class = Counter(r.raw_label for r, name in named if name is None)
    if not records:
        raise DatasetLayoutError(f"{where}: no image left: every image with a class is a near-duplicate of the "
                                 f"parent's training images ({selection.left_out} left out)")
    ok, unreadable, model_probs, flagged = evaluator.predict([r.path for r in records])
    records = [records[i] for i in ok]
    targets = np.array([classes.index(task_class(r, label_set)) for r in records], dtype=np.int64)
    notes = list(selection.notes) + check_classes(where, {c: int((targets == i).sum()) for i, c in enumerate(classes)},
                                                  cfg.positive)
    prepared = load_prepared([r.path for r in records], evaluator.meta.preprocessing, progress=cfg.progress,
                             also=[guard_preprocessing()], on_bad_image="fail", lungs=segmenter_lungs())
    hashes = hash_files([r.path for r in records], progress=cfg.progress).hashes
    if not any(r.patient_id for r in records):
        notes.append(f"{where}: no patient column, so folds are drawn by near-duplicate group only")
    groups = record_groups(records, hashes, cfg.dedup_distance)
    for note in notes:
        log(note)
    return SiteData(where, classes, records, targets, prepared.images, prepared.also[0], groups, dict(hashes),
                    model_probs @ evaluator.merge, flagged, selection.n_listed, selection.left_out,
                    dict((without_class + selection.dropped).most_common()), list(unreadable), notes)
