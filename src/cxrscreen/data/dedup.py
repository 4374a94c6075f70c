"""Near-duplicate images across and within collections: 64-bit perceptual hashes compared by Hamming distance.

Public collections re-use each other's pictures, re-encoded and resized, so file names do not reveal it (e.g.
ieee8023 images inside the Radiography Database's COVID class). A pHash (:func:`imagehash.phash`) of the decoded
image survives resizing and JPEG re-encoding within a few bits. Hashes are cached on disk, keyed by file path,
size and modification time, so a collection is hashed once. Distances use a vectorised popcount over blocks of
pairs, so 15k images compare with each other in seconds.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from cxrscreen.data.imageio import load_xray
from cxrscreen.data.records import Record
from cxrscreen.errors import CxrError

DEFAULT_MAX_DISTANCE = 6
CACHE_FILE_NAME = "phash-v1.sqlite"
# Elements of one block of the pairwise XOR (uint64): ~32 MB at a time whatever the number of images.
BLOCK_ELEMENTS = 4_000_000


def cache_dir() -> Path:
    """cxrscreen's cache folder: ``$CXRSCREEN_CACHE``, else ``$XDG_CACHE_HOME/cxrscreen``, else ``~/.cache/cxrscreen``."""
    if os.environ.get("CXRSCREEN_CACHE"):
        return Path(os.environ["CXRSCREEN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxrscreen"


def image_phash(image: np.ndarray) -> str:
    """64-bit pHash of a decoded X-ray (float32 (H, W) in [0, 1]) as 16 hex digits."""
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return str(imagehash.phash(Image.fromarray(pixels, mode="L")))


def file_key(path: str | os.PathLike) -> str:
    """Cache key of a file: real path, size and modification time (a changed file is hashed again)."""
    stat = os.stat(path)
    return f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


class HashCache:
    """pHashes on disk (SQLite, safe for several processes). Unusable locations just disable caching."""

    def __init__(self, path: Path | None) -> None:
        self.connection: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(path, timeout=30)
            self.connection.execute("CREATE TABLE IF NOT EXISTS phash (key TEXT PRIMARY KEY, hash TEXT NOT NULL)")
        except (OSError, sqlite3.Error):
            self.connection = None

    def get(self, keys: Sequence[str]) -> dict[str, str]:
        if self.connection is None or not keys:
            return {}
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            query = f"SELECT key, hash FROM phash WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(self.connection.execute(query, chunk).fetchall())
        return found

    def put(self, items: dict[str, str]) -> None:
        if self.connection is None or not items:
            return
        try:
            with self.connection:
                self.connection.executemany("INSERT OR REPLACE INTO phash VALUES (?, ?)", items.items())
        except sqlite3.Error:
            self.connection = None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


@dataclass
class FileHashes:
    """``hashes`` maps each readable file (as given) to its pHash; ``errors`` lists (path, reason) of the rest."""

    hashes: dict[str, str] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)


def hash_files(
    paths: Iterable[str | os.PathLike], progress: bool = False, cache_file: Path | None | bool = True
) -> FileHashes:
    """pHash of every file, from the on-disk cache where possible (``cache_file``: True = default location,
    False/None = no cache, or a path)."""
    paths = [str(p) for p in paths]
    if cache_file is True:
        cache_file = cache_dir() / CACHE_FILE_NAME
    cache = HashCache(cache_file or None)
    result = FileHashes()
    keys: dict[str, str] = {}
    for path in paths:
        try:
            keys[path] = file_key(path)
        except OSError as exc:
            result.errors.append((path, exc.strerror or str(exc)))
    cached = cache.get(list(keys.values()))
    computed: dict[str, str] = {}
    missing = [p for p in keys if keys[p] not in cached]
    for path in tqdm(missing, desc="hashing images", unit="img", disable=not progress, leave=False):
        try:
            computed[keys[path]] = image_phash(load_xray(path))
        except CxrError as exc:
            result.errors.append((path, str(exc).removeprefix(f"{path}: ")))
        if len(computed) >= 1000:
            cache.put(computed)
            cached.update(computed)
            computed = {}
    cache.put(computed)
    cached.update(computed)
    cache.close()
    result.hashes = {path: cached[key] for path, key in keys.items() if key in cached}
    return result


def hashes_to_array(hashes: Iterable[str]) -> np.ndarray:
    """Hex pHashes -> uint64 array (N,)."""
    return np.fromiter((int(h, 16) for h in hashes), dtype=np.uint64)


def as_hash_array(hashes: Iterable[str] | np.ndarray) -> np.ndarray:
    if isinstance(hashes, np.ndarray) and hashes.dtype == np.uint64:
        return hashes
    return hashes_to_array(hashes)


def hamming_distances(a: Iterable[str] | np.ndarray, b: Iterable[str] | np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances, uint8 (len(a), len(b)); for small sets (memory grows as the product)."""
    a, b = as_hash_array(a), as_hash_array(b)
    return np.bitwise_count(a[:, None] ^ b[None, :])


def near_duplicate_pairs(
    hashes: Iterable[str] | np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE
) -> np.ndarray:
    """Pairs (i, j, distance) with i < j and Hamming distance <= ``max_distance``; int64 (K, 3)."""
    values = as_hash_array(hashes)
    n = len(values)
    block = max(1, BLOCK_ELEMENTS // max(n, 1))
    found = [np.zeros((0, 3), dtype=np.int64)]
    for start in range(0, n, block):
        rows = values[start : start + block]
        distances = np.bitwise_count(rows[:, None] ^ values[None, start:])
        i, j = np.nonzero(distances <= max_distance)
        keep = j > i
        i, j = i[keep], j[keep]
        found.append(np.stack([i + start, j + start, distances[i, j]], axis=1).astype(np.int64))
    return np.concatenate(found)


def min_distances(hashes: Iterable[str] | np.ndarray, reference: Iterable[str] | np.ndarray) -> np.ndarray:
    """For each hash, the Hamming distance to its nearest reference hash; int64 (N,), 65 when there is none."""
    values, reference = as_hash_array(hashes), as_hash_array(reference)
    out = np.full(len(values), 65, dtype=np.int64)
    if len(reference) == 0:
        return out
    block = max(1, BLOCK_ELEMENTS // len(reference))
    for start in range(0, len(values), block):
        rows = values[start : start + block]
        out[start : start + len(rows)] = np.bitwise_count(rows[:, None] ^ reference[None, :]).min(axis=1)
    return out


def near_duplicate_groups(
    hashes: Iterable[str] | np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE
) -> list[list[int]]:
    """Groups (index lists, two or more members) of images linked by chains of near-duplicate pairs."""
    values = as_hash_array(hashes)
    pairs = near_duplicate_pairs(values, max_distance)
    if len(pairs) == 0:
        return []
    n = len(values)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    members: dict[int, list[int]] = {}
    for index in np.flatnonzero(sizes[component] > 1):
        members.setdefault(int(component[index]), []).append(int(index))
    return list(members.values())


def leave_out_near_duplicates(
    records: Sequence[Record],
    hashes: Mapping[str, str],
    reference_hashes: Iterable[str],
    max_distance: int = DEFAULT_MAX_DISTANCE,
) -> tuple[list[Record], int]:
    """Records without a near-duplicate among ``reference_hashes`` (e.g. a checkpoint's ``train_hashes``).

    ``hashes`` maps record paths to pHashes; a record without a hash (unreadable) is kept, since it cannot be
    compared and will fail, and be reported, when it is loaded. Returns (kept records, number left out).
    """
    reference = hashes_to_array(reference_hashes)
    hashed = [i for i, record in enumerate(records) if record.path in hashes]
    distances = min_distances([hashes[records[i].path] for i in hashed], reference)
    left_out = {hashed[k] for k in np.flatnonzero(distances <= max_distance)}
    return [record for i, record in enumerate(records) if i not in left_out], len(left_out)
