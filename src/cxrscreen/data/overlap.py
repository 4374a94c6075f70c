"""Which of one collection's images are already in another: near-duplicates across collections.

Collections copy each other's pictures (the Radiography Database holds hundreds of ieee8023 images, re-encoded and
resized), so an "external" test set or a merged training set can hold the same picture twice. For every pair of
collections, earlier before later in the order given, this counts the later collection's images, per class (the
source's canonical finding), that have a near-duplicate (:mod:`cxrscreen.data.dedup`) in the earlier one, and lists
the pairs with their distances.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, near_duplicate_pairs
from cxrscreen.data.records import Record
from cxrscreen.data.summary import format_table

PAIR_COLUMNS = ("collection_a", "path_a", "class_a", "collection_b", "path_b", "class_b", "distance")


@dataclass(frozen=True)
class Collection:
    """The images of one ``--data`` path, named as the user will read it."""

    name: str
    records: Sequence[Record]


@dataclass(frozen=True)
class DuplicatePair:
    """``later`` (an image of collection ``later_collection``) is within ``distance`` bits per 64 of ``earlier``."""

    earlier_collection: str
    earlier: Record
    later_collection: str
    later: Record
    distance: float


@dataclass
class OverlapCount:
    """Of ``images`` images of class ``label`` in collection ``later``, ``duplicated`` have a near-duplicate in
    ``earlier``; ``earlier_labels`` counts them by the class of their near-duplicates there (an image whose copies
    there have two classes counts under both: the same picture labelled twice)."""

    later: str
    earlier: str
    label: str
    images: int
    duplicated: int
    earlier_labels: Counter


@dataclass
class CollectionOverlap:
    """Counts per (later, earlier) collection pair and class, the pairs (closest first), and the unhashed images."""

    counts: list[OverlapCount]
    pairs: list[DuplicatePair]
    max_distance: float
    unhashed: int = 0

    def format(self, listed_pairs: int = 0) -> str:
        """The counts table, and the ``listed_pairs`` closest pairs."""
        rows = [[c.later, c.earlier, c.label, str(c.images), str(c.duplicated), f"{c.duplicated / c.images:.1%}",
                 ", ".join(f"{label} {n}" for label, n in c.earlier_labels.most_common())] for c in self.counts]
        lines = [f"near-duplicates across collections (pHash distance <= {self.max_distance:g} bits per 64): "
                 f"{len(self.pairs)} pairs",
                 format_table(["images of", "already in", "class", "images", "with a near-duplicate", "share", "class there"], rows)]
        if self.unhashed:
            lines.append(f"{self.unhashed} images could not be read, so were not compared")
        for pair in self.pairs[:listed_pairs]:
            lines.append(f"{pair.distance:5.2f}  {pair.later.path}  ~  {pair.earlier.path}")
        if 0 < listed_pairs < len(self.pairs):
            lines.append(f"... and {len(self.pairs) - listed_pairs} more pairs (--out FILE writes them all)")
        return "\n".join(lines)

    def write_pairs(self, path: str | os.PathLike) -> Path:
        """Every pair as CSV (:data:`PAIR_COLUMNS`; a = the earlier collection, b = the later)."""
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PAIR_COLUMNS)
            for p in self.pairs:
                writer.writerow([p.earlier_collection, p.earlier.path, p.earlier.label,
                                 p.later_collection, p.later.path, p.later.label, f"{p.distance:g}"])
        return path


def collection_overlap(
    collections: Sequence[Collection], hashes: Mapping[str, str], max_distance: float = DEFAULT_MAX_DISTANCE
) -> CollectionOverlap:
    """Near-duplicates between every two of ``collections`` (``hashes``: image path -> pHash; images without one are
    counted as unhashed and left out)."""
    owners = [(k, record) for k, c in enumerate(collections) for record in c.records if record.path in hashes]
    found, distances = near_duplicate_pairs([hashes[record.path] for _, record in owners], max_distance)
    pairs: list[DuplicatePair] = []
    # (later collection, earlier collection, later image path) -> classes of its near-duplicates in the earlier one
    duplicated: dict[tuple[int, int, str], set[str]] = {}
    for (i, j), distance in zip(found.tolist(), distances.tolist()):
        (ci, ri), (cj, rj) = owners[i], owners[j]
        if ci == cj:
            continue
        (ce, re), (cl, rl) = ((ci, ri), (cj, rj)) if ci < cj else ((cj, rj), (ci, ri))
        pairs.append(DuplicatePair(collections[ce].name, re, collections[cl].name, rl, distance))
        duplicated.setdefault((cl, ce, rl.path), set()).add(re.label)
    pairs.sort(key=lambda p: (p.distance, p.later_collection, p.later.path, p.earlier.path))
    counts = []
    for later in range(1, len(collections)):
        images = Counter(r.label for r in collections[later].records if r.path in hashes)
        for earlier in range(later):
            hits: Counter = Counter()
            there: dict[str, Counter] = {label: Counter() for label in images}
            for record in collections[later].records:
                labels = duplicated.get((later, earlier, record.path))
                if labels:
                    hits[record.label] += 1
                    there[record.label].update(labels)
            counts.extend(OverlapCount(collections[later].name, collections[earlier].name, label, n, hits[label], there[label])
                          for label, n in images.most_common())
    unhashed = sum(1 for c in collections for r in c.records if r.path not in hashes)
    return CollectionOverlap(counts, pairs, max_distance, unhashed)


def collection_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short names for ``--data`` paths: the folder or file name, the whole path where two names would clash."""
    names = [Path(os.path.abspath(p)).name or str(p) for p in paths]
    clashes = {name for name, n in Counter(names).items() if n > 1}
    return [str(p) if name in clashes else name for p, name in zip(paths, names)]

