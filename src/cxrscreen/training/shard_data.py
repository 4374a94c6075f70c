"""Training images streamed from WebDataset shards (``train --shards DIR_OR_URL``), written by ``data shard --split``.

The shards hold one split's training side only (their manifest says ``side: train`` and carries a digest of their
images' paths, which must equal the run's training side less the images that could not be read), so a run that
streams them cannot train on a validation or test image; validation and test images come from the cache as usual.

Who reads what is webdataset's own machinery: ``split_by_node`` gives each DDP rank every ``world_size``-th shard of
the manifest's list (by ``RANK``/``WORLD_SIZE``, as torchrun sets them, or the process group), the rank shuffles its
shards per epoch, ``split_by_worker`` gives each loader worker every ``workers``-th of those, and each worker
shuffles its samples in a buffer. Every seed is the run's seed, the epoch, the rank and the worker, so an epoch
streams the same batches when it is run again: a run stopped in the middle of an epoch resumes from its last
completed epoch (``last.pt``) and repeats the interrupted one exactly, giving the run it would have given.

Every rank takes the same number of batches (no DDP hang): ``ceil(L / batch_size)``, where ``L`` is the largest
sample count any rank's shards hold (from the manifest). A rank whose shards hold fewer samples pads its epoch by
repeating its stream from the start (padding, not truncation: no sample is skipped). Each sample is therefore seen
at least once per epoch, and exactly once when the shards divide evenly over ranks x workers and the batch size
divides the rank's count (``data shard`` writes equal shards, all but the last).
"""

from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cxrscreen.data.records import Record
from cxrscreen.data.shards import MANIFEST, paths_digest
from cxrscreen.data.sources import Dataset
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.errors import ConfigError, DatasetLayoutError

SHUFFLE_BUFFER = 1000  # samples each worker shuffles among (25-50 MB at 160-224 px)
WORKER_BATCH = 64  # samples a worker hands over at once


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def shard_url(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if is_url(location) else str(Path(location) / name)


def read_manifest(location: str) -> dict[str, Any]:
    """``manifest.json`` of the shards at ``location`` (a folder or an http(s) URL)."""
    where = shard_url(location, MANIFEST)
    try:
        if is_url(location):
            with urllib.request.urlopen(where, timeout=60) as response:
                text = response.read().decode()
        else:
            text = Path(where).read_text()
        manifest = json.loads(text)
    except (OSError, ValueError) as exc:
        raise DatasetLayoutError(f"{where}: cannot read the shards' manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "webdataset" or "shards" not in manifest:
        raise DatasetLayoutError(f"{where}: not a manifest written by cxrscreen data shard")
    return manifest


@dataclass
class ShardSet:
    """The shards of a run's training side: where they are, their manifest, and each shard's URL and count."""

    location: str
    manifest: dict[str, Any]

    @property
    def urls(self) -> list[str]:
        return [shard_url(self.location, shard["name"]) for shard in self.manifest["shards"]]

    @property
    def counts(self) -> list[int]:
        return [int(shard["samples"]) for shard in self.manifest["shards"]]

    def __len__(self) -> int:
        return int(self.manifest["samples"])


def open_shards(location: str, part: Dataset, pp: Preprocessing) -> tuple[ShardSet, list[Record], np.ndarray]:
    """The shards at ``location``, checked against the run's training side ``part`` and preprocessing, with the
    records and classes of the images they hold (``part`` less the images ``data shard`` could not read)."""
    manifest = read_manifest(location)
    if manifest.get("side") != "train":
        raise DatasetLayoutError(f"{location}: these shards hold every image of their collections, not a split's "
                                 "training side; write them with data shard --split (the run's split.csv)")
    if manifest.get("preprocessing") != pp.to_dict():
        raise DatasetLayoutError(f"{location}: shards prepared as {manifest.get('preprocessing')}, the run prepares "
                                 f"{pp.to_dict()}; pass the same --img-size/--lung-mode/--equalize")
    if manifest.get("classes") != list(part.classes):
        raise DatasetLayoutError(f"{location}: shards of classes {manifest.get('classes')}, the run's are {list(part.classes)}")
    failed = {entry["path"] for entry in manifest.get("failed", [])}
    keep = [i for i, record in enumerate(part.records) if record.path not in failed]
    if paths_digest(part.records[i].path for i in keep) != manifest.get("paths_digest"):
        raise DatasetLayoutError(f"{location}: the shards hold other images than this run's training side; "
                                 "train with the split they were written from (--split)")
    return ShardSet(location, manifest), [part.records[i] for i in keep], part.targets[keep].astype(np.int64)


@dataclass
class ShardBatch:
    images: np.ndarray  # uint8 (B, S, S)
    targets: np.ndarray  # int64 (B,)
    sources: np.ndarray  # int64 (B,): index into the run's collections
    keys: list[str]


def as_is(batch: Any) -> Any:
    """The loader's collate: a worker's list of samples passes as it is (no conversion to tensors)."""
    return batch


def stream_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class ShardStream:
    """A rank's epochs of training batches from a :class:`ShardSet` (see the module's docstring)."""

    def __init__(self, shards: ShardSet, batch_size: int, seed: int, collections: list[str], workers: int = 2):
        from webdataset.utils import pytorch_worker_info

        self.shards, self.batch_size, self.seed = shards, batch_size, seed
        self.sources = {name: i for i, name in enumerate(collections)}
        # The rank and world size split_by_node will see (torchrun's RANK/WORLD_SIZE, or the process group).
        self.rank, self.world_size, _, _ = pytorch_worker_info()
        counts = shards.counts
        if len(counts) < self.world_size:
            raise ConfigError(f"{shards.location}: {len(counts)} shard(s) for {self.world_size} ranks; write at least "
                              "one shard per rank (data shard --shard-size)")
        per_rank = [counts[r:: self.world_size] for r in range(self.world_size)]
        self.own_samples = sum(per_rank[self.rank])  # what this rank's shards hold, by the manifest
        self.rank_samples = max(sum(c) for c in per_rank)
        self.workers = max(0, min(workers, min(len(c) for c in per_rank)))

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.rank_samples / self.batch_size))

    def pipeline(self, epoch: int):
        import webdataset as wds
        from webdataset.utils import pytorch_worker_info

        def shuffle_shards(urls):  # after split_by_node: this rank's shards, in this epoch's order
            urls = list(urls)
            order = np.random.default_rng([self.seed, epoch, self.rank]).permutation(len(urls))
            yield from (urls[i] for i in order)

        def shuffle_samples(samples):
            worker = pytorch_worker_info()[2]
            yield from wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_BUFFER, seed=stream_seed(self.seed, epoch, self.rank, worker))(samples)

        return wds.DataPipeline(
            wds.SimpleShardList(self.shards.urls), wds.split_by_node, shuffle_shards, wds.split_by_worker,
            wds.tarfile_to_samples(), shuffle_samples, wds.decode("l8"), wds.to_tuple("__key__", "png", "cls", "json"),
            wds.batched(WORKER_BATCH, collation_fn=list, partial=True))

    def samples(self, epoch: int) -> Iterator[tuple[str, np.ndarray, int, dict[str, Any]]]:
        """This rank's samples of ``epoch``, in order, repeated from the start when they run out (padding)."""
        from torch.utils.data import DataLoader

        while True:
            loader = DataLoader(self.pipeline(epoch), batch_size=None, num_workers=self.workers, collate_fn=as_is)
            seen = 0
            try:
                for group in loader:
                    seen += len(group)
                    yield from group
            except (OSError, ValueError, RuntimeError) as exc:  # a worker's error arrives with its traceback
                cause = str(exc).strip().splitlines()[-1]
                raise DatasetLayoutError(f"{self.shards.location}: cannot stream the shards ({cause})") from None
            if seen != self.own_samples:  # a shard cut short or rewritten: padding would hide it
                raise DatasetLayoutError(f"{self.shards.location}: rank {self.rank}'s shards streamed {seen} samples, "
                                         f"the manifest counts {self.own_samples}")

    def batches(self, epoch: int) -> Iterator[ShardBatch]:
        """``steps_per_epoch`` batches of ``batch_size`` samples."""
        stream = self.samples(epoch)
        try:
            for _ in range(self.steps_per_epoch):
                keys, images, targets, metas = zip(*islice(stream, self.batch_size))
                yield ShardBatch(np.stack(images), np.asarray(targets, dtype=np.int64),
                                 np.array([self.source(m) for m in metas], dtype=np.int64), list(keys))
        finally:
            stream.close()  # stops the loader's workers

    def source(self, meta: dict[str, Any]) -> int:
        if meta["collection"] not in self.sources:
            raise DatasetLayoutError(f"{self.shards.location}: a sample of collection {meta['collection']!r}, which "
                                     "the run's training side does not hold")
        return self.sources[meta["collection"]]
