"""Dataset sources: recognise a collection's layout by itself and list its images as records of one task.

Every ``--data PATH`` goes through :func:`load_dataset`: the layout is detected (:func:`detect_layout`), the
source's module lists its images with canonical findings, and the task's :class:`LabelSet` maps findings onto
classes. Images the task has no class for are dropped and counted (``Dataset.dropped``), never silently.

Adding a source is one module: a ``detect`` and a ``scan`` function registered with :func:`register_source`,
imported below (the import order is the detection order: most specific layouts first).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cxrscreen.data.labels import LabelSet
from cxrscreen.data.records import Record
from cxrscreen.data.sources import manifest, ieee8023, kermany, radiography, nlm, jsrt, folder  # noqa: F401  (detection order)
from cxrscreen.data.sources.base import SOURCES, Source, SourceScan, has_images, register_source, subfolders
from cxrscreen.errors import DatasetLayoutError

GENERIC_SOURCES = frozenset({folder.NAME})


@dataclass
class Dataset:
    """The images of one task: ``records[i]`` has class ``classes[targets[i]]``.

    ``dropped`` counts images whose label the task has no class for (raw label -> count); ``excluded`` counts
    images a source left out (reason -> count, e.g. lateral views); ``notes`` are one-line remarks for the user.
    """

    records: list[Record]
    targets: np.ndarray
    label_set: LabelSet
    dropped: Counter = field(default_factory=Counter)
    excluded: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    layouts: dict[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.label_set.classes

    @property
    def paths(self) -> list[str]:
        return [record.path for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.targets, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Dataset":
        """The same task restricted to ``records[indices]`` (counts of drops and exclusions are kept)."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset([self.records[i] for i in indices], self.targets[indices], self.label_set,
                       self.dropped, self.excluded, self.notes, self.layouts)

    def summary_dict(self) -> dict:
        """JSON-ready counts (for a checkpoint's training-data summary or a report)."""
        return {
            "images": len(self.records),
            "classes": self.class_counts(),
            "sources": dict(Counter(record.source for record in self.records).most_common()),
            "layouts": dict(self.layouts),
            "dropped": dict(self.dropped.most_common()),
            "excluded": dict(self.excluded.most_common()),
        }

    def describe(self) -> str:
        """A few lines for the user: counts per class, what was dropped or excluded and why."""
        counts = ", ".join(f"{name} {n}" for name, n in self.class_counts().items())
        lines = [f"{len(self.records)} images ({counts}) from {', '.join(f'{p} [{n}]' for p, n in self.layouts.items())}"]
        if self.dropped:
            dropped = ", ".join(f"{label} {n}" for label, n in self.dropped.most_common())
            lines.append(f"dropped (no class in this task): {dropped}")
        lines.extend(f"excluded: {n} {reason}" for reason, n in self.excluded.most_common())
        lines.extend(self.notes)
        return "\n".join(lines)


def detect_specific(path: Path) -> tuple[Source, Path] | None:
    """The first non-generic source that recognises ``path``, with the collection's root; None if none does."""
    for source in SOURCES.values():
        if source.name not in GENERIC_SOURCES:
            root = source.detect(path)
            if root is not None:
                return source, root
    return None


def check_exists(path: str | os.PathLike) -> Path:
    """``path`` made absolute; :class:`DatasetLayoutError` when there is nothing there (cheap: no layout detection)."""
    target = Path(os.path.abspath(path))
    if not target.exists():
        raise DatasetLayoutError(f"{path}: no such file or folder")
    return target


def locate(path: str | os.PathLike) -> tuple[Source, Path]:
    """The source whose layout ``path`` holds, and the collection's root (maybe a folder below ``path``)."""
    target = check_exists(path)
    if not target.is_dir() and target.suffix.lower() != ".csv":
        raise DatasetLayoutError(f"{path}: not a folder or a CSV manifest")
    found = detect_specific(target)
    if found:
        return found
    # A subfolder that holds images itself is a class folder, even when its file names follow a collection's
    # convention (e.g. a user's normal/ and tb/ folders of Shenzhen images).
    collections = [sub.name for sub in subfolders(target) if not has_images(sub) and detect_specific(sub)]
    if len(collections) > 1:
        raise DatasetLayoutError(f"{path}: holds several collections ({', '.join(collections)}); pass each with --data")
    for name in GENERIC_SOURCES:
        root = SOURCES[name].detect(target)
        if root is not None:
            return SOURCES[name], root
    expected = "; ".join(source.description for source in SOURCES.values())
    raise DatasetLayoutError(f"{path}: unrecognised dataset layout (expected {expected})")


def detect_layout(path: str | os.PathLike) -> str:
    """Name of the layout at ``path`` (``radiography_db``, ``kermany``, ``ieee8023``, ``nlm_tb``, ``jsrt``, ``folder``,
    ``manifest``)."""
    return locate(path)[0].name


def task_class(record: Record, label_set: LabelSet) -> str | None:
    """The task's class of a record; a ``--label-map`` entry for the raw label wins over the alias table."""
    if record.raw_label.strip().lower() in label_set.extra:
        return label_set.class_of(record.raw_label)
    return label_set.class_of(record.label)


def scan_paths(paths: Iterable[str | os.PathLike], frontal_only: bool = True) -> tuple[SourceScan, dict[str, str]]:
    """Every image under ``paths`` (each file once, even when two paths hold it) and the layout of each path."""
    combined = SourceScan()
    layouts: dict[str, str] = {}
    seen: set[str] = set()
    for path in paths:
        source, root = locate(path)
        layouts[str(path)] = source.name
        scan = source.scan(root, frontal_only)
        repeats = 0
        for record in scan.records:
            if record.path in seen:
                repeats += 1
                continue
            seen.add(record.path)
            combined.records.append(record)
        combined.excluded.update(scan.excluded)
        combined.notes.extend(scan.notes)
        if repeats:
            combined.notes.append(f"{path}: {repeats} images already listed by an earlier --data path, used once")
    return combined, layouts


def load_dataset(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    label_set: LabelSet | None = None,
    frontal_only: bool = True,
    allow_missing_classes: bool = False,
    keep_unused_labels: bool = False,
) -> Dataset:
    """Load one or more collections as a task's dataset (default task: :data:`cxrscreen.data.labels.DEFAULT_CLASSES`).

    Raises :class:`DatasetLayoutError` for a missing path, an unrecognised layout, no usable image, or a class of
    the task without any image (unless ``allow_missing_classes``, e.g. for an external test set).
    ``keep_unused_labels`` (for looking at a collection, ``data summary``): no image is dropped; each label the task
    has no class for becomes a class of its own, named after the label, and empty task classes are kept.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise DatasetLayoutError("--data: no dataset path given")
    label_set = label_set or LabelSet.parse(None)
    scan, layouts = scan_paths(paths, frontal_only)
    records: list[Record] = []
    targets: list[int] = []
    dropped: Counter = Counter()
    for record in scan.records:
        name = task_class(record, label_set)
        if name is None:
            dropped[record.raw_label] += 1
            continue
        records.append(record)
        targets.append(label_set.classes.index(name))
    where = ", ".join(str(p) for p in paths)
    if keep_unused_labels and dropped:
        dataset = load_dataset(paths, with_unused_labels(label_set, dropped), frontal_only, allow_missing_classes=True)
        listed = ", ".join(f"{label} {n}" for label, n in dropped.most_common())
        dataset.notes.append(f"labels the task {','.join(label_set.classes)} has no class for, each shown as a class of "
                             f"its own: {listed} (--label-map LABEL=CLASS maps one onto a task class)")
        return dataset
    if not records:
        found = ", ".join(f"{label} {n}" for label, n in dropped.most_common()) or "no images"
        raise DatasetLayoutError(f"{where}: no image has a label the task {','.join(label_set.classes)} uses (found: {found}); "
                                 "--label-map LABEL=CLASS maps a label onto a class")
    dataset = Dataset(records, np.asarray(targets, dtype=np.int64), label_set, dropped, scan.excluded, scan.notes, layouts)
    empty = [name for name, n in dataset.class_counts().items() if n == 0]
    if empty and not (allow_missing_classes or keep_unused_labels):
        counts = ", ".join(f"{name} {n}" for name, n in dataset.class_counts().items() if n)
        raise DatasetLayoutError(
            f"{where}: no image of class {', '.join(empty)} (found: {counts}); drop it from --classes or add a collection that has it"
        )
    return dataset

def with_unused_labels(label_set: LabelSet, unused: Counter) -> LabelSet:
    """``label_set`` plus one class per label in ``unused`` (raw label -> count), mapped from that label."""
    extra = dict(label_set.extra)
    added: list[str] = []
    for label in unused:
        name = label if label.lower() not in label_set.classes else f"{label} (label)"
        extra[label.strip().lower()] = name
        added.append(name)
    return LabelSet((*label_set.classes, *added), extra)


__all__ = ["Dataset", "SOURCES", "Source", "SourceScan", "detect_layout", "load_dataset", "locate", "register_source"]
