"""The data of the recipes benchmark (``benchmarks/generalisation.py``): the adult collections as one binary
``covid,other`` manifest, one split shared by every recipe, a manifest per left-out collection, and the
preparation of every image before any training starts (so trainings running side by side only read the cache).

Every recipe trained on the adult collections reads the same manifest and split: a leave-one-collection-out run
reads the same split with that collection's rows missing (``load_split`` ignores rows it is not asked about), so
its training images are exactly the full run's minus that collection's.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.dedup import hash_files
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.records import Record
from cxrscreen.data.sources import Dataset, load_dataset
from cxrscreen.data.splits import make_split, save_split
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.guard.inputs import guard_preprocessing
from cxrscreen.io_utils import atomic_write
from cxrscreen.lungs.finder import load_lung_finder
from cxrscreen.training.run_data import limit_per_class

SHARED = Path(os.environ.get("CXRSCREEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")).resolve()
RADIOGRAPHY = SHARED / "COVID-19_Radiography_Dataset"
# The adult collections of recipes R1-R4, by the short names --leave-out uses (RDB is never left out).
COLLECTIONS = {
    "RDB": RADIOGRAPHY,
    "TB": SHARED / "TB_Chest_Radiography_Database",
    "MS": SHARED / "lung_segmentation" / "montgomery_shenzhen",
    "JSRT": SHARED / "lung_segmentation" / "jsrt",
}
LEAVE_OUT = ("TB", "MS", "JSRT")
IEEE8023 = SHARED / "covid-chestxray-dataset"
KERMANY = SHARED / "chest_xray"
BINARY = "covid,other"
PREPARE_CHUNK = 2000  # images prepared at a time: bounds the memory the warm-up holds


@dataclass
class AdultData:
    """The adult collections' manifest and split (``manifest``, ``split``), one manifest per left-out collection
    (``without[key]``), and the images of each collection in the manifest and on its training side
    (``counts[key]``, ``train_counts[key]``)."""

    manifest: Path
    split: Path
    without: dict[str, Path]
    counts: dict[str, int]
    train_counts: dict[str, int]


def cap_per_cell(dataset: Dataset, cap: int | None, seed: int) -> Dataset:
    """At most ``cap`` images of each (class, collection) cell, drawn with ``seed`` (the whole cell when smaller)."""
    if cap is None:
        return dataset
    cells: dict[tuple[int, str], list[int]] = {}
    for i, (record, target) in enumerate(zip(dataset.records, dataset.targets)):
        cells.setdefault((int(target), record.collection), []).append(i)
    rng = np.random.default_rng(seed)
    chosen = [index for members in cells.values() for index in rng.permutation(members)[:cap]]
    return dataset.subset(np.sort(np.asarray(chosen, dtype=np.int64)))


def load_adult(limit: int | None, cap: int | None, seed: int) -> tuple[Dataset, list[str]]:
    """The adult collections as one ``covid,other`` dataset (``--cap-per-cell``, then ``--limit-per-class``) and
    the short name of each record's collection."""
    label_set = LabelSet.parse(BINARY)
    records: list[Record] = []
    keys: list[str] = []
    targets: list[np.ndarray] = []
    for key, path in COLLECTIONS.items():
        part = load_dataset(path, label_set, allow_missing_classes=True)
        records += part.records
        keys += [key] * len(part.records)
        targets.append(part.targets)
    whole = Dataset(records, np.concatenate(targets), label_set)
    key_of = {r.path: k for r, k in zip(records, keys)}
    chosen = limit_per_class(cap_per_cell(whole, cap, seed), limit, seed)
    return chosen, [key_of[r.path] for r in chosen.records]


def write_manifest(records: list[Record], path: Path) -> Path:
    """A CSV manifest (``path,label,patient_id,source``) of ``records``; labels are their canonical findings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "source"])
        writer.writerows([r.path, r.label, r.patient_id or "", r.source] for r in records)
    return path


def build_adult_data(out: Path, limit: int | None, cap: int | None, seed: int) -> AdultData:
    """Write ``out/adult.csv``, its split ``out/split.csv`` (by patient and near-duplicate, stratified by class,
    seeded) and ``out/adult_without_<KEY>.csv`` for each collection that can be left out."""
    dataset, keys = load_adult(limit, cap, seed)
    hashes = hash_files(dataset.paths, progress=True).hashes
    split = make_split(dataset, hashes, seed=seed)
    manifest = write_manifest(dataset.records, out / "adult.csv")
    split_path = save_split(split, out / "split.csv")
    without = {key: write_manifest([r for r, k in zip(dataset.records, keys) if k != key], out / f"adult_without_{key}.csv")
               for key in LEAVE_OUT}
    counts = {key: keys.count(key) for key in COLLECTIONS}
    train_counts = {key: int(sum(1 for k, side in zip(keys, split.assignment) if k == key and side == "train"))
                    for key in COLLECTIONS}
    return AdultData(manifest, split_path, without, counts, train_counts)


def kermany_normals_manifest(data_dir: Path) -> Path:
    """``data_dir/kermany_test_normal.csv``: Kermany's published test split, NORMAL images (healthy children)."""
    dataset = load_dataset(KERMANY, LabelSet.parse("normal,other"))
    normals = [r for r in dataset.records if r.extra.get("split") == "test" and r.label == "normal"]
    return write_manifest(normals, data_dir / "kermany_test_normal.csv")


def evaluation_paths(data_dir: Path, leave_out: list[str]) -> list[str]:
    """Every image the measurements score: ieee8023, Kermany test normals and the left-out collections."""
    paths = load_dataset(IEEE8023, LabelSet.parse(BINARY), allow_missing_classes=True).paths
    paths += load_dataset(kermany_normals_manifest(data_dir), LabelSet.parse("normal,other"), allow_missing_classes=True).paths
    for key in leave_out:
        paths += load_dataset(COLLECTIONS[key], LabelSet.parse(BINARY), allow_missing_classes=True).paths
    return paths


def warm_caches(paths: list[str], pp: Preprocessing) -> None:
    """Hash and prepare ``paths`` (the classifier's input and the OOD guard's thumbnail) into the disk caches, so
    that trainings and evaluations running side by side only read them."""
    unique = sorted(set(paths))
    hash_files(unique, progress=True)
    for start in range(0, len(unique), PREPARE_CHUNK):
        load_prepared(unique[start : start + PREPARE_CHUNK], pp, also=[guard_preprocessing()], lungs=load_lung_finder(),
                      progress=True)
