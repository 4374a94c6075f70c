"""The site's labelled images, chosen as ``evaluate`` chooses them, and the parent model's view of them.

:func:`load_site` asks :class:`~cxrscreen.evaluation.evaluate.Evaluator` for the images with a class of the site
(labels mapped through the evaluator's label set, :mod:`cxrscreen.data.labels`; frontal views only unless
``frontal_only`` is False; near-duplicates of the parent's training images left out and counted, their pHashes
kept), prepares each image once (the prepared-image cache), with the OOD guard's thumbnails from the same pass,
and scores the prepared arrays with the parent (temperature-scaled probabilities). Fine-tuning and the guard then
use those same arrays and hashes: no site image is decoded, prepared or hashed twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cxrscreen.adaptation.config import MIN_IMAGES_PER_CLASS, AdaptConfig
from cxrscreen.data.dedup import hash_files
from cxrscreen.data.records import Record
from cxrscreen.data.sources import task_class
from cxrscreen.data.splits import record_groups
from cxrscreen.data.stack import ImageStack
from cxrscreen.errors import ConfigError, DatasetLayoutError
from cxrscreen.evaluation.evaluate import EvaluationConfig, Evaluator


@dataclass
class SiteData:
    """The images adaptation uses: ``records`` with ``targets`` (indices into ``classes``), prepared ``images``
    (uint8 (N, S, S)) and guard ``thumbnails`` (uint8 (N, 64, 64)), both on disk (read a batch at a time), leakage ``groups`` (N,), pHashes, and the
    parent's probabilities on the site's classes (``parent_probs`` (N, C), its temperature applied)."""

    where: str
    classes: list[str]
    records: list[Record]
    targets: np.ndarray
    images: ImageStack
    thumbnails: ImageStack
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
                                      n_resamples=cfg.n_resamples, seed=cfg.seed, progress=cfg.progress,
                                      backend="torch"))  # fine-tuning needs the torch network: export nothing


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
    # Loaded with the site's classes: a site none of whose labels maps onto them gets one line naming them.
    selection = evaluator.select_records(list(cfg.data), "data", label_set=label_set, frontal_only=cfg.frontal_only)
    classes = list(label_set.classes)
    if not selection.records:
        raise DatasetLayoutError(f"{where}: no image left: every image with a class is a near-duplicate of the "
                                 f"parent's training images ({selection.left_out} left out)")
    loaded = evaluator.load([r.path for r in selection.records], thumbnails=True)
    model_probs, flagged = evaluator.predict_arrays(loaded.images, loaded.thumbnails)
    records = [selection.records[i] for i in loaded.ok]
    targets = np.array([classes.index(task_class(r, label_set)) for r in records], dtype=np.int64)
    notes = list(selection.notes) + check_classes(where, {c: int((targets == i).sum()) for i, c in enumerate(classes)},
                                                  cfg.positive)
    # The near-duplicate check hashed the site already; only a parent without training hashes skipped it.
    hashes = selection.hashes or hash_files([r.path for r in records], progress=cfg.progress).hashes
    if not any(r.patient_id for r in records):
        notes.append(f"{where}: no patient column, so folds are drawn by near-duplicate group only")
    groups = record_groups(records, hashes, cfg.dedup_distance)
    for note in notes:
        log(note)
    return SiteData(where, classes, records, targets, loaded.images, loaded.thumbnails, groups,
                    {r.path: hashes[r.path] for r in records if r.path in hashes}, model_probs @ evaluator.merge,
                    flagged, selection.n_listed, selection.left_out, dict(selection.dropped.most_common()),
                    list(loaded.errors), notes)
