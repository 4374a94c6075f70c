"""Near-duplicate images across and within collections: perceptual hashes compared by Hamming distance.

Public collections re-use each other's pictures, re-encoded and resized, so file names do not reveal it (e.g.
ieee8023 images inside the Radiography Database's COVID class). A pHash (:func:`imagehash.phash`) of the decoded
image survives resizing and JPEG re-encoding within a few bits.

Why 256 bits: frontal chest X-rays look alike at the 8x8 DCT level a 64-bit pHash keeps. Measured on the real
data, 64-bit hashes put 98 of Kermany's 624 test images within 6 bits of some Radiography DB image although the
DB holds none of them (false matches, and chains of them join thousands of images into one "duplicate" group),
while a 256-bit pHash (``hash_size=16``) keeps those pairs at >= 48 of 256 bits and resized/re-encoded copies
within 8. Distances are still expressed in bits of a 64-bit hash (``max_distance=6`` means at most 6/64 of the
bits differ, i.e. 24 of 256), so thresholds read the same whatever the hash width.

Hashes are hex strings, cached on disk keyed by file path, size and modification time, so a collection is hashed
once. Near-duplicate pairs are found by multi-index hashing (:mod:`cxrscreen.data.hash_index`): exact, and a
million hashes take minutes rather than hours; distances between small sets use a vectorised popcount over blocks
of pairs.
"""

from __future__ import annotations

import math
import os
import sqlite3
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxrscreen.data.cache import cache_root
from cxrscreen.data.defaults import DEFAULT_MAX_DISTANCE  # noqa: F401 - re-exported
from cxrscreen.data.hash_index import near_pairs
from cxrscreen.data.imageio import load_xray, to_uint8
from cxrscreen.data.records import Record
from cxrscreen.errors import ConfigError, CxrError

PHASH_SIZE = 16  # imagehash's hash_size: a 16x16 DCT block, 256 bits
DISTANCE_UNIT_BITS = 64  # distances are reported per 64 bits of hash
CACHE_FILE_NAME = f"phash{PHASH_SIZE * PHASH_SIZE}-v1.sqlite"
# Pairs compared at once: ~32 MB of uint64 XOR per word, whatever the number of images.
BLOCK_ELEMENTS = 4_000_000
# Files whose cache keys are looked up at once.
HASH_CHUNK = 10_000


def image_phash(image: np.ndarray) -> str:
    """256-bit pHash of a decoded X-ray (float32 (H, W) in [0, 1]) as 64 hex digits."""
    import imagehash  # imported here, like scipy below, so that `cxrscreen --help` starts fast

    pixels = to_uint8(image)
    return str(imagehash.phash(Image.fromarray(pixels, mode="L"), hash_size=PHASH_SIZE))


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
        cache_file = cache_root() / CACHE_FILE_NAME
    cache = HashCache(cache_file or None)
    result = FileHashes()
    with tqdm(total=len(paths), desc="hashing images", unit="img", disable=not progress, leave=False) as bar:
        # A chunk at a time: the cache keys (each a path, size and time) of a whole 400k-image collection would
        # be held at once for nothing.
        for start in range(0, len(paths), HASH_CHUNK):
            _hash_chunk(paths[start : start + HASH_CHUNK], cache, result, bar)
    cache.close()
    return result


def _hash_chunk(paths: list[str], cache: HashCache, result: FileHashes, bar: tqdm) -> None:
    """:func:`hash_files` of some of the files: their pHashes from ``cache`` or computed (and stored), into ``result``."""
    keys: dict[str, str] = {}
    for path in paths:
        try:
            keys[path] = file_key(path)
        except OSError as exc:
            result.errors.append((path, exc.strerror or str(exc)))
    cached = cache.get(list(keys.values()))
    bar.update(len(paths) - sum(keys[p] not in cached for p in keys))
    computed: dict[str, str] = {}
    for path in [p for p in keys if keys[p] not in cached]:
        try:
            computed[keys[path]] = image_phash(load_xray(path))
        except CxrError as exc:
            result.errors.append((path, str(exc).removeprefix(f"{path}: ")))
        bar.update()
        if len(computed) >= 1000:
            cache.put(computed)
            cached.update(computed)
            computed = {}
    cache.put(computed)
    cached.update(computed)
    result.hashes.update((path, cached[key]) for path, key in keys.items() if key in cached)


def hashes_to_array(hashes: Iterable[str]) -> np.ndarray:
    """Hex hashes (all of one width, a multiple of 64 bits) -> uint64 array (N, words)."""
    hexes = list(hashes)
    widths = {len(h) for h in hexes}
    if len(widths) > 1 or any(w % 16 for w in widths):
        raise ConfigError(f"hashes of different or unsupported widths ({sorted(w * 4 for w in widths)} bits) cannot be compared")
    words = widths.pop() // 16 if widths else 1
    # One string and one buffer for all of them (not a Python int per word: 400k hashes would make 1.6M of them).
    try:
        raw = bytes.fromhex("".join(hexes))
    except ValueError:
        raw = b""
    if len(raw) != 8 * words * len(hexes):  # fromhex also skips spaces: a hash with one is not a hash
        raise ConfigError(f"not a hexadecimal hash: {next(h for h in hexes if not _is_hex(h))!r}")
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hexes), words)


def _is_hex(text: str) -> bool:
    return all(c in string.hexdigits for c in text)


def as_hash_array(hashes: Iterable[str] | np.ndarray) -> np.ndarray:
    if isinstance(hashes, np.ndarray) and hashes.dtype == np.uint64:
        return hashes if hashes.ndim == 2 else hashes.reshape(len(hashes), -1)
    return hashes_to_array(hashes)


def block_bits(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Differing bits of every (row, column) pair of hashes, uint16 (len(rows), len(columns))."""
    if rows.shape[1] != columns.shape[1]:
        raise ConfigError(f"cannot compare {rows.shape[1] * 64}-bit hashes with {columns.shape[1] * 64}-bit hashes")
    bits = np.zeros((len(rows), len(columns)), dtype=np.uint16)
    for word in range(rows.shape[1]):  # word by word on contiguous columns: faster than one 3-D XOR
        bits += np.bitwise_count(rows[:, word, None] ^ np.ascontiguousarray(columns[:, word])[None, :])
    return bits


def bits_per_unit(hashes: np.ndarray) -> int:
    """Hash bits per distance unit (64 bits of hash): 4 for 256-bit hashes."""
    return hashes.shape[1] * 64 // DISTANCE_UNIT_BITS


def hamming_distances(a: Iterable[str] | np.ndarray, b: Iterable[str] | np.ndarray) -> np.ndarray:
    """All pairwise distances (bits per 64), float64 (len(a), len(b)); for small sets (memory grows as the product)."""
    a, b = as_hash_array(a), as_hash_array(b)
    return block_bits(a, b) / bits_per_unit(a)


def max_differing_bits(max_distance: float, hashes: np.ndarray) -> int:
    """The most bits of ``hashes``' width that may differ within ``max_distance`` bits per 64 (24 of 256 for 6):
    the whole hash is compared, not each 64-bit word."""
    return math.floor(max_distance * bits_per_unit(hashes))


def near_duplicate_pairs(
    hashes: Iterable[str] | np.ndarray, max_distance: float = DEFAULT_MAX_DISTANCE
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, int64 (K, 2) sorted, at distance <= ``max_distance`` (bits per 64), and their distances
    (K,). Found by multi-index hashing (:mod:`cxrscreen.data.hash_index`), not by comparing all pairs."""
    values = as_hash_array(hashes)
    pairs, bits, _ = near_pairs(values, None, max_differing_bits(max_distance, values))
    return pairs, bits / bits_per_unit(values)


def near_duplicates_between(
    hashes: Iterable[str] | np.ndarray, reference: Iterable[str] | np.ndarray, max_distance: float = DEFAULT_MAX_DISTANCE
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) int64 (K, 2), ``hashes[i]`` at distance <= ``max_distance`` (bits per 64) of ``reference[j]``,
    and their distances (K,)."""
    values, reference = as_hash_array(hashes), as_hash_array(reference)
    pairs, bits, _ = near_pairs(values, reference, max_differing_bits(max_distance, values))
    return pairs, bits / bits_per_unit(values)


def min_distances(hashes: Iterable[str] | np.ndarray, reference: Iterable[str] | np.ndarray) -> np.ndarray:
    """For each hash, the distance (bits per 64) to its nearest reference hash; float64 (N,), inf without reference."""
    values, reference = as_hash_array(hashes), as_hash_array(reference)
    out = np.full(len(values), np.inf)
    if len(reference) == 0 or len(values) == 0:
        return out
    block = max(1, BLOCK_ELEMENTS // len(reference))
    for start in range(0, len(values), block):
        rows = values[start : start + block]
        out[start : start + len(rows)] = block_bits(rows, reference).min(axis=1) / bits_per_unit(reference)
    return out


def near_duplicate_groups(
    hashes: Iterable[str] | np.ndarray, max_distance: float = DEFAULT_MAX_DISTANCE
) -> list[list[int]]:
    """Groups (index lists, two or more members) of images linked by chains of near-duplicate pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    values = as_hash_array(hashes)
    pairs, _ = near_duplicate_pairs(values, max_distance)
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
    max_distance: float = DEFAULT_MAX_DISTANCE,
) -> tuple[list[Record], int]:
    """Records without a near-duplicate among ``reference_hashes`` (e.g. a checkpoint's ``train_hashes``).

    ``hashes`` maps record paths to pHashes; a record without a hash (unreadable) is kept, since it cannot be
    compared and will fail, and be reported, when it is loaded. Returns (kept records, number left out).
    """
    hashed = [i for i, record in enumerate(records) if record.path in hashes]
    pairs, _ = near_duplicates_between([hashes[records[i].path] for i in hashed], hashes_to_array(reference_hashes), max_distance)
    left_out = {hashed[k] for k in np.unique(pairs[:, 0])}
    return [record for i, record in enumerate(records) if i not in left_out], len(left_out)
