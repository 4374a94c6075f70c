"""The data of a training run: the records, their leakage-free split and the prepared images of each side."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, hash_files
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.records import Record
from cxrscreen.data.sources import load_dataset, Dataset
from cxrscreen.data.splits import Split, load_split, make_split, save_split, split_from_rows
from cxrscreen.data.stack import ImageStack
from cxrscreen.errors import DatasetLayoutError, RunDirError
from cxrscreen.guard.fit import GUARD_SIDES
from cxrscreen.guard.inputs import guard_preprocessing
from cxrscreen.lungs.finder import load_lung_finder
from cxrscreen.memory import give_back_memory
from cxrscreen.models.meta import ModelMeta
from cxrscreen.training.config import TrainConfig
from cxrscreen.training.shard_data import open_shards

SIDES = ("train", "val", "test")


@dataclass
class RunData:
    """Prepared inputs (uint8, N x S x S, on disk: :class:`ImageStack`) and class indices per side, plus what the
    run was trained on."""

    label_set: LabelSet
    records: dict[str, list[Record]]
    images: dict[str, ImageStack]
    targets: dict[str, np.ndarray]
    hashes: dict[str, str]  # path -> pHash of every image that hashed (the split's own dict, not a copy)
    dropped: Counter = field(default_factory=Counter)
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    data_paths: list[str] = field(default_factory=list)
    dedup_distance: int = DEFAULT_MAX_DISTANCE
    # The OOD guard's whole-image inputs (uint8 (N, 64, 64)) of the train and val sides, for its fit after training.
    guard_inputs: dict[str, ImageStack] = field(default_factory=dict)

    train_images = property(lambda self: self.images["train"])
    val_images = property(lambda self: self.images["val"])
    test_images = property(lambda self: self.images["test"])
    train_targets = property(lambda self: self.targets["train"])
    val_targets = property(lambda self: self.targets["val"])
    test_targets = property(lambda self: self.targets["test"])

    @property
    def collections(self) -> list[str]:
        """The training images' collections (:attr:`Record.collection`), sorted: what a source id indexes."""
        return sorted({r.collection for r in self.records["train"]})

    @property
    def train_sources(self) -> np.ndarray:
        """Source id (index into :attr:`collections`) of every training image, aligned with ``train_images``."""
        index = {name: i for i, name in enumerate(self.collections)}
        return np.array([index[r.collection] for r in self.records["train"]], dtype=np.int64)

    @property
    def train_hashes(self) -> list[str]:
        """pHashes of the training images (stored in the checkpoint to leave their near-duplicates out later)."""
        return [self.hashes[r.path] for r in self.records["train"] if r.path in self.hashes]

    def fingerprint(self) -> str:
        """A digest of the images, in order, and the classes of every side: equal on ranks that train alike."""
        digest = hashlib.blake2b(digest_size=16)
        for side in SIDES:
            digest.update("\n".join([side, *(r.path for r in self.records[side])]).encode())
            digest.update(np.ascontiguousarray(self.targets[side], dtype=np.int64).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Training-data summary stored in the checkpoint (counts per side, class and source)."""
        classes = list(self.label_set.classes)
        per_side = {side: dict(zip(classes, np.bincount(self.targets[side], minlength=len(classes)).tolist())) for side in SIDES}
        sources = Counter(r.source for side in SIDES for r in self.records[side])
        return {
            "data": self.data_paths,
            "classes": classes,
            "images_per_split": per_side,
            "sources": dict(sources),
            "patients_known": sum(1 for side in SIDES for r in self.records[side] if r.patient_id),
            "dropped_labels": dict(self.dropped),
            "bad_images": len(self.bad_images),
            "split_rule": f"by patient and by near-duplicate image (256-bit pHash, distance <= {self.dedup_distance} per 64 bits), stratified by class, seeded",
        }


def limit_per_class(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most ``limit`` images per class, drawn with ``seed`` (small runs for tests and benchmarks)."""
    if limit is None:
        return dataset
    rng = np.random.default_rng(seed)
    keep = [np.flatnonzero(dataset.targets == c) for c in range(len(dataset.classes))]
    chosen = np.sort(np.concatenate([rng.permutation(idx)[:limit] for idx in keep]))
    return dataset.subset(chosen)


def run_dataset(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[LabelSet, Dataset, Dataset]:
    """The run's label set, every image of its collections in its classes, and the images it uses
    (``--limit-per-class``); what the loaders noted and dropped is logged."""
    label_set = LabelSet.parse(cfg.classes, cfg.label_map)
    full = load_dataset(cfg.data, label_set, frontal_only=cfg.frontal_only)
    for note in full.notes:
        log(note)
    if full.dropped:
        log("dropped (no class in this task): " + ", ".join(f"{k} {v}" for k, v in sorted(full.dropped.items())))
    return label_set, full, limit_per_class(full, cfg.limit_per_class, cfg.seed)


@dataclass
class RunSplit:
    """A run's label set, what its loaders dropped, and its leakage-free split (before any image is prepared)."""

    label_set: LabelSet
    dropped: Counter
    split: Split


def split_run(cfg: TrainConfig, split_file: Path | None, log: Callable[[str], None], progress: bool,
              rows: Mapping[str, Mapping[str, str]] | None = None) -> RunSplit:
    """Load the collections and split them: a new split, the one saved in ``split_file``, or the one ``rows`` give
    (:func:`cxrscreen.data.splits.split_rows` of rank 0's split, handed over the process group, so that no rank
    needs rank 0's files)."""
    label_set, full, dataset = run_dataset(cfg, log)
    if rows is not None:
        split = split_from_rows(rows, dataset, "rank 0's split")
    elif split_file is not None:
        split = load_split(split_file, dataset)
        # A split.csv written by hand (or by an older cxrscreen) may lack pHashes: the guard and the checkpoint need them.
        unhashed = [path for path in dataset.paths if path not in split.hashes]
        split.hashes.update(hash_files(unhashed, progress=progress).hashes if unhashed else {})
    else:
        hashes = hash_files(dataset.paths, progress=progress).hashes
        split = make_split(dataset, hashes, seed=cfg.seed, fractions=cfg.fractions, max_distance=cfg.dedup_distance)
    return RunSplit(label_set, full.dropped, split)


def prepare_run_data(cfg: TrainConfig, run_split: RunSplit, log: Callable[[str], None], progress: bool) -> RunData:
    """Prepare every image of the split once (through the cache); unreadable images are left out and logged."""
    label_set, split = run_split.label_set, run_split.split
    data = RunData(label_set, {}, {}, {}, split.hashes, run_split.dropped, [], list(cfg.data), cfg.dedup_distance)
    for side in SIDES:
        part = split.part(side)
        if side == "train" and cfg.shards:  # streamed during training; the guard reads its inputs when it is fitted
            data.images[side], data.records[side], data.targets[side] = open_shards(cfg.shards, part, cfg.preprocessing)
            continue
        # The OOD guard is fitted on the training and validation images after training: make its thumbnails now,
        # from the same decode.
        guard_pp = [guard_preprocessing()] if side in GUARD_SIDES else []
        prepared = load_prepared(part.paths, cfg.preprocessing, progress=progress, on_bad_image=cfg.on_bad_image,
                                 also=guard_pp, lungs=load_lung_finder())
        kept = [part.records[i] for i in prepared.ok]
        data.records[side] = kept
        data.images[side] = prepared.images
        if guard_pp:
            data.guard_inputs[side] = prepared.also[0]
        # The dataset's own targets: the class its loader gave each image (a --label-map on raw labels included).
        data.targets[side] = part.targets[prepared.ok].astype(np.int64)
        data.bad_images.extend(prepared.errors)
    for path, reason in data.bad_images:
        log(f"{path}: {reason} (skipped)")
    if data.bad_images:
        log(f"skipped {len(data.bad_images)} unreadable image(s)")
    for side in SIDES:
        if len(data.images[side]) == 0:
            raise DatasetLayoutError(f"the {side} split is empty: too few images in {', '.join(cfg.data)}")
    missing = [c for i, c in enumerate(label_set.classes) if not (data.train_targets == i).any()]
    if missing:
        raise DatasetLayoutError(f"no training images for class(es) {', '.join(missing)} in {', '.join(cfg.data)}")
    log(", ".join(f"{side} {len(data.images[side])}" for side in SIDES) + " images")
    give_back_memory()  # what listing, hashing, splitting and preparing a collection made and dropped
    return data


def recreate_split(meta: ModelMeta, log: Callable[[str], None] = print, progress: bool = False) -> Split:
    """The split a checkpoint was trained on, made again from the config it stores (same collections, classes,
    seed, fractions and near-duplicate distance), for a model whose run directory is gone (a bundled one).
    A :class:`RunDirError` unless its training images are exactly those the checkpoint's pHashes list."""
    cfg = TrainConfig.from_dict(meta.config)
    split = split_run(cfg, None, log, progress).split  # a new split, as the run made it
    train = sorted(split.hashes[path] for path in split.part("train").paths if path in split.hashes)
    if train != sorted(meta.train_hashes):
        raise RunDirError(f"{meta.name}: its split cannot be made again from {', '.join(cfg.data)}: the training "
                          f"images differ from those it records ({len(train)} against {len(meta.train_hashes)})")
    return split


def index_batches(data: RunData, indices: np.ndarray, batch_size: int, steps: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images uint8, classes, source ids) of the training images of each step, ``batch_size`` of ``indices`` at a
    time; the images are read from disk as each batch is used."""
    sources = data.train_sources
    for step in range(steps):
        batch = indices[step * batch_size : (step + 1) * batch_size]
        yield data.train_images[batch], data.train_targets[batch], sources[batch]
