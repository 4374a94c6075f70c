"""Train/validation/test splits that never put one patient, or one picture, on two sides.

Images are joined into groups when they share a patient (``Record.group_key``) or are near-duplicates of each
other (pHash distance <= ``max_distance`` bits per 64, see :mod:`cxrscreen.data.dedup`; within or across
collections); the groups are connected
components of that graph. Whole groups are then dealt to the splits, largest first, each to the split that most
lacks the group's classes, so every split gets about its fraction of every class. Seeded: the same dataset,
hashes and seed give the same split.

A split is saved as ``split.csv`` (path,label,class,patient_id,source,split,phash) and read back with
:func:`load_split` to train or evaluate on exactly the same images.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, hashes_to_array, near_duplicate_pairs
from cxrscreen.data.records import Record
from cxrscreen.data.sources import Dataset
from cxrscreen.data.sources.base import read_csv_rows
from cxrscreen.errors import ConfigError, DatasetLayoutError
from cxrscreen.io_utils import atomic_write

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
SPLIT_COLUMNS = ("path", "label", "class", "patient_id", "source", "split", "phash")


@dataclass
class Split:
    """``assignment[i]`` (``train``/``val``/``test``) is the side of ``dataset.records[i]``; ``hashes`` maps
    record paths to pHashes (absent for unreadable images)."""

    dataset: Dataset
    assignment: np.ndarray
    hashes: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def indices(self, name: str) -> np.ndarray:
        if name not in SPLIT_NAMES:
            raise ConfigError(f"split name must be one of {', '.join(SPLIT_NAMES)}, got {name!r}")
        return np.flatnonzero(self.assignment == name)

    def part(self, name: str) -> Dataset:
        """The records of one side as a :class:`Dataset` (same classes)."""
        return self.dataset.subset(self.indices(name))

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        return {name: self.part(name).class_counts() for name in SPLIT_NAMES}

    def describe(self) -> str:
        lines = []
        for name, counts in self.counts().items():
            per_class = ", ".join(f"{cls} {n}" for cls, n in counts.items())
            lines.append(f"{name:<5} {sum(counts.values()):>6} images ({per_class})")
        return "\n".join(lines)


def parse_fractions(spec: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` (train, val, test) -> a validated tuple; the fractions must sum to 1."""
    try:
        values = tuple(float(v) for v in (spec.split(",") if isinstance(spec, str) else spec))
    except ValueError:
        raise ConfigError(f"--fractions expects three numbers like 0.7,0.15,0.15, got {spec!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or values[0] <= 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"--fractions needs train,val,test >= 0 (train > 0) summing to 1, got {spec!r}")
    return values  # type: ignore[return-value]


def leakage_groups(dataset: Dataset, hashes: Mapping[str, str], max_distance: float) -> np.ndarray:
    """Group index per record (int64 (N,)): same patient or near-duplicate pictures share a group."""
    return record_groups(dataset.records, hashes, max_distance)


def record_groups(records: Sequence[Record], hashes: Mapping[str, str], max_distance: float) -> np.ndarray:
    """:func:`leakage_groups` of a list of records (``hashes`` maps paths to pHashes; records without one are
    grouped by patient only)."""
    n = len(records)
    # Each record is joined to the first record of its patient (``Record.group_key``: collection and patient, or
    # the image itself). The keys are looked up in per-collection dicts of the strings the records already hold,
    # and the edges go straight into arrays: a 400k-image collection makes no Python object per image here.
    first_of_patient: dict[str, dict[str, int]] = {}
    first_of_image: dict[str, int] = {}
    collection_of: dict[str, str] = {}

    def first(i: int, record: Record) -> int:
        if not record.patient_id:
            return first_of_image.setdefault(record.path, i)
        collection = collection_of.get(record.source) or collection_of.setdefault(record.source, record.collection)
        return first_of_patient.setdefault(collection, {}).setdefault(record.patient_id, i)

    firsts = np.fromiter((first(i, r) for i, r in enumerate(records)), dtype=np.int64, count=n)
    del first_of_patient, first_of_image
    hashed = np.flatnonzero(np.fromiter((r.path in hashes for r in records), dtype=bool, count=n))
    pairs, _ = near_duplicate_pairs(hashes_to_array([hashes[records[i].path] for i in hashed]), max_distance)
    row = np.concatenate([firsts, hashed[pairs[:, 0]]])
    col = np.concatenate([np.arange(n, dtype=np.int64), hashed[pairs[:, 1]]])
    graph = coo_matrix((np.ones(len(row)), (row, col)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def assign_groups(
    groups: np.ndarray, targets: np.ndarray, num_classes: int, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per record, dealing whole groups to keep each class's fractions."""
    num_groups = int(groups.max()) + 1 if len(groups) else 0
    composition = np.zeros((num_groups, num_classes), dtype=np.int64)
    np.add.at(composition, (groups, targets), 1)
    wanted = np.asarray(fractions, dtype=np.float64)[:, None] * composition.sum(axis=0)[None, :]
    have = np.zeros_like(wanted)
    order = np.random.default_rng(seed).permutation(num_groups)
    order = order[np.argsort(-composition[order].sum(axis=1), kind="stable")]
    side_of_group = np.zeros(num_groups, dtype=np.int64)
    for group in order:
        # Relative shortfall of each split in this group's classes; splits with fraction 0 never qualify.
        shortfall = ((wanted - have) / np.maximum(wanted, 1e-9)) @ composition[group]
        shortfall[np.asarray(fractions) <= 0] = -np.inf
        side = int(np.argmax(shortfall))
        side_of_group[group] = side
        have[side] += composition[group]
    return side_of_group[groups]


def make_split(
    dataset: Dataset,
    hashes: Mapping[str, str],
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_distance: float = DEFAULT_MAX_DISTANCE,
) -> Split:
    """A leakage-free, class-stratified split of ``dataset``; ``hashes`` maps record paths to pHashes
    (:func:`cxrscreen.data.dedup.hash_files`), images without a hash are grouped by patient only."""
    fractions = parse_fractions(fractions)
    groups = leakage_groups(dataset, hashes, max_distance)
    sides = assign_groups(groups, dataset.targets, len(dataset.classes), fractions, seed)
    config = {"seed": seed, "fractions": list(fractions), "max_distance": max_distance}
    hashes = {r.path: hashes[r.path] for r in dataset.records if r.path in hashes}
    return Split(dataset, np.asarray(SPLIT_NAMES)[sides], hashes, config)


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write ``split.csv`` atomically, one row per image; returns the path."""
    target = Path(path)
    with atomic_write(target, "w") as fh:
        writer = csv.writer(fh)
        writer.writerow(SPLIT_COLUMNS)
        for record, target_index, side in zip(split.dataset.records, split.dataset.targets, split.assignment):
            cls = split.dataset.classes[target_index]
            phash = split.hashes.get(record.path, "")
            writer.writerow([record.path, record.label, cls, record.patient_id or "", record.source, side, phash])
    return target


def split_rows(split: Split) -> dict[str, dict[str, str]]:
    """Each image's row of ``split.csv`` (class, side, pHash) keyed by its path: the split as plain data, to hand to
    :func:`split_from_rows` in another process (a DDP rank on a machine that cannot read this one's files)."""
    return {record.path: {"class": split.dataset.classes[target], "split": side, "phash": split.hashes.get(record.path, "")}
            for record, target, side in zip(split.dataset.records, split.dataset.targets, split.assignment)}


def load_split(path: str | os.PathLike, dataset: Dataset) -> Split:
    """Read back the split of ``dataset``'s records from a ``split.csv``.

    Every record must be in the file with the same class; rows for images not in ``dataset`` are ignored.
    """
    source = Path(path)
    if not source.is_file():
        raise DatasetLayoutError(f"{path}: split file not found")
    rows = {row["path"]: row for row in read_csv_rows(source, ("path", "class", "split"))}
    split = split_from_rows(rows, dataset, str(path))
    split.config = {"loaded_from": str(source)}
    return split


def split_paths(path: str | os.PathLike) -> set[str]:
    """The image paths a ``split.csv`` lists (every side)."""
    return {row["path"] for row in read_csv_rows(Path(path), ("path", "split"))}


def load_split_of(path: str | os.PathLike, dataset: Dataset, what: str) -> tuple[Split, int]:
    """The split in ``split.csv`` of those of ``dataset``'s records it lists (a run may have used part of a
    collection: ``--limit-per-class``), and how many records it does not list; a :class:`DatasetLayoutError`
    naming ``what`` (the images asked for) when it lists none of them."""
    if not Path(path).is_file():
        raise DatasetLayoutError(f"{path}: split file not found")
    listed_paths = split_paths(path)
    listed = [i for i, record in enumerate(dataset.records) if record.path in listed_paths]
    if not listed:
        raise DatasetLayoutError(f"{path}: none of the images of {what} is in the run's split")
    return load_split(path, dataset.subset(listed)), len(dataset.records) - len(listed)


def split_from_rows(rows: Mapping[str, Mapping[str, str]], dataset: Dataset, origin: str) -> Split:
    """The split of ``dataset``'s records that ``rows`` (path -> ``class``, ``split``, ``phash``; as in
    ``split.csv`` or from :func:`split_rows`) gives; ``origin`` names where the rows came from in errors.

    Every record must be in ``rows`` with the same class; rows for images not in ``dataset`` are ignored.
    """
    missing = [r.path for r in dataset.records if r.path not in rows]
    if missing:
        raise DatasetLayoutError(
            f"{origin}: {len(missing)} of the dataset's {len(dataset)} images are not in this split file (e.g. {missing[0]})"
        )
    assignment = []
    for record, target in zip(dataset.records, dataset.targets):
        row = rows[record.path]
        if row["split"] not in SPLIT_NAMES:
            raise DatasetLayoutError(f"{origin}: split {row['split']!r} for {record.path} is not one of {', '.join(SPLIT_NAMES)}")
        if row["class"] != dataset.classes[target]:
            raise DatasetLayoutError(
                f"{origin}: {record.path} has class {row['class']!r} there but {dataset.classes[target]!r} in this task"
            )
        assignment.append(row["split"])
    hashes = {r.path: rows[r.path]["phash"] for r in dataset.records if rows[r.path].get("phash")}
    return Split(dataset, np.asarray(assignment), hashes, {"from": origin})
