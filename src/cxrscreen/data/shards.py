"""A collection's prepared images as WebDataset tar shards, for engines that stream their data.

WebDataset (the ``webdataset`` package) rather than LitData: its shards are plain POSIX tar files, one member per
field of a sample, read in order, so any tar reader, ``curl``, an object store or an HTTP server serves them as they
are, and ``webdataset``, ``torchdata`` and Ray read them without cxrscreen; LitData's chunks are its own binary
format, readable through LitData only.

Each sample (``__key__`` its position in the collection, zero-padded) holds:

- ``png``: the prepared image (uint8, the preprocessing's side, lossless), as training and evaluation see it;
- ``cls``: its class index in the manifest's ``classes``;
- ``json``: ``path``, ``label``, ``class``, ``patient`` (null when unknown), ``source``, ``collection`` and
  ``content_hash`` (blake2b of the file's bytes, as the prepared-image cache keys it).

``manifest.json`` beside the shards names the preprocessing, the classes, every shard with its sample count, the
files that could not be read (left out, with their reason), the side of a split the shards hold (``side``: ``all``,
or ``train`` when written with ``--split``: only that split's training images, so that ``train --shards`` cannot
train on a validation or test image) and ``paths_digest`` (of the sorted paths of the samples), which ``train
--shards`` compares with its split's training side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.sources import Dataset
from cxrscreen.data.transforms import LungFinder, Preprocessing
from cxrscreen.errors import ConfigError, RunDirError
from cxrscreen.hashing import content_hash
from cxrscreen.io_utils import write_json

SHARD_SIZE = 1000  # samples per shard: 25-50 MB at 160-224 px, large enough to stream, small enough to spread
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-%06d.tar"


@dataclass
class ShardReport:
    """What :func:`write_shards` wrote: the manifest, each shard's name and sample count, the files left out."""

    manifest: Path
    shards: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(shard["samples"] for shard in self.shards)


def write_shards(dataset: Dataset, pp: Preprocessing, out: str | Path, shard_size: int = SHARD_SIZE,
                 progress: bool = False, lungs: LungFinder | None = None, overwrite: bool = False,
                 side: str = "all") -> ShardReport:
    """Write ``dataset``'s images, prepared with ``pp`` (through the cache, read back a batch at a time), into
    WebDataset shards of ``shard_size`` samples under ``out``, plus ``manifest.json``. ``side``: which side of a
    split ``dataset`` is (``all``: a whole collection), recorded in the manifest."""
    import webdataset as wds  # imported here, like the command's other libraries, so `cxrscreen --help` starts fast

    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise RunDirError(f"{out}: holds shards already; use --overwrite to replace them or another --out")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("shard-*.tar"):
        stale.unlink()
    prepared = load_prepared(dataset.paths, pp, progress=progress, lungs=lungs)
    report = ShardReport(out / MANIFEST, failed=list(prepared.errors))
    counts: dict[str, int] = {}
    with wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=shard_size, verbose=0) as sink:
        for start in range(0, len(prepared.ok), 256):
            images = prepared.images[start : start + 256]
            for image, index in zip(images, prepared.ok[start : start + 256]):
                record, target = dataset.records[index], int(dataset.targets[index])
                sink.write({"__key__": f"{index:09d}", "png": image, "cls": target, "json": {
                    "path": record.path, "label": record.label, "class": dataset.classes[target],
                    "patient": record.patient_id, "source": record.source, "collection": record.collection,
                    "content_hash": content_hash(Path(record.path).read_bytes())}})
                name = Path(sink.fname).name
                counts[name] = counts.get(name, 0) + 1
    report.shards = [{"name": name, "samples": count} for name, count in counts.items()]
    write_json(report.manifest, {
        "format": "webdataset", "version": 1, "preprocessing": pp.to_dict(), "classes": list(dataset.classes),
        "samples": report.samples, "shards": report.shards, "side": side,
        "paths_digest": paths_digest(dataset.records[i].path for i in prepared.ok),
        "class_counts": dict(zip(dataset.classes, np.bincount(dataset.targets[prepared.ok], minlength=len(dataset.classes)).tolist())),
        "failed": [{"path": path, "reason": reason} for path, reason in report.failed],
    })
    return report


def paths_digest(paths: Iterable[str]) -> str:
    """A digest of a set of image paths (sorted): equal when shards hold exactly a split side's images."""
    return content_hash("\n".join(sorted(paths)).encode())
