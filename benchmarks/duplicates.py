"""Near-duplicate search at scale: multi-index hashing against comparing all pairs (issue 29).

Usage (from the repo root):

    .venv/bin/python benchmarks/duplicates.py                                # 100k, 400k, 1M synthetic + shared data
    .venv/bin/python benchmarks/duplicates.py --sizes 20000 --skip-shared    # quick look

Synthetic hashes are made from the 256-bit pHashes of every shared collection (hashed once, then cached), each with
15% of its bits flipped at random: as many distinct "pictures" as asked, with the bit statistics of real chest
X-rays (whose low DCT frequencies agree, which crowds some buckets). Then N/50 hashes are replaced by copies of as
many others with 0 to 24 of 256 bits flipped (the default threshold, 6 per 64): the planted pairs, of which >= 99.9%
must be found. The all-pairs time is measured on the first 20k hashes and extrapolated as N^2 (marked ~).
On the shared data, the groups of the index must be exactly those of comparing all pairs.

Targets (this 2-core machine): 400k hashes <= 2 min, 1M <= 10 min, memory linear (bytes per hash flat).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

from cxrscreen.data.dedup import BLOCK_ELEMENTS, DEFAULT_MAX_DISTANCE, block_bits, hash_files, hashes_to_array, near_duplicate_groups
from cxrscreen.data.hash_index import near_pairs
from cxrscreen.data.sources import scan_paths

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COLLECTIONS = ("COVID-19_Radiography_Dataset", "chest_xray", "covid-chestxray-dataset", "TB_Chest_Radiography_Database",
               "lung_segmentation/jsrt", "lung_segmentation/montgomery_shenzhen")
MAX_BITS = DEFAULT_MAX_DISTANCE * 4  # of 256
FLIP_SHARE = 0.15
ALL_PAIRS_SAMPLE = 20_000


def shared_hashes() -> tuple[list[str], list[str]]:
    """Paths and pHashes of every image of every shared collection (lateral views too)."""
    paths = [r.path for c in COLLECTIONS for r in scan_paths([SHARED / c], frontal_only=False)[0].records]
    hashes = hash_files(paths, progress=True).hashes
    return list(hashes), list(hashes.values())


def flip_random_bits(values: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(values.view(np.uint8), axis=1)
    bits ^= (rng.random(bits.shape, dtype=np.float32) < share).astype(np.uint8)
    return np.packbits(bits, axis=1).view(np.uint64)


def synthetic_hashes(real: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` hashes (uint64 (n, 4)) and the planted pairs (P, 2), i < j, each 0..MAX_BITS bits apart."""
    values = np.concatenate([flip_random_bits(real[rng.integers(len(real), size=min(100_000, n - start))], FLIP_SHARE, rng)
                             for start in range(0, n, 100_000)])
    planted = n // 50
    chosen = rng.permutation(n)[: 2 * planted].reshape(2, planted)
    flips = rng.random((planted, 256), dtype=np.float32).argsort(axis=1) < rng.integers(0, MAX_BITS + 1, size=(planted, 1))
    values[chosen[1]] = values[chosen[0]] ^ np.packbits(flips, axis=1).view(np.uint64)
    return values, np.sort(chosen.T, axis=1)


def all_pairs(values: np.ndarray, max_bits: int) -> np.ndarray:
    """The search the index replaced, as it was: every pair compared, rows in blocks of BLOCK_ELEMENTS pairs.
    Pairs (K, 2), i < j."""
    found = []
    block = max(1, BLOCK_ELEMENTS // len(values))
    for start in range(0, len(values), block):
        i, j = np.nonzero(block_bits(values[start : start + block], values[start:]) <= max_bits)
        keep = j > i
        found.append(np.stack([i[keep] + start, j[keep] + start], axis=1))
    return np.concatenate(found)


def timed_search(values: np.ndarray) -> tuple[np.ndarray, int, float, int]:
    """Pairs, candidates checked, seconds, and the peak bytes the search allocated (tracemalloc sees numpy's arrays)."""
    tracemalloc.start()
    start = time.perf_counter()
    pairs, _, candidates = near_pairs(values, None, MAX_BITS)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return pairs, candidates, seconds, peak


def synthetic_row(real: np.ndarray, n: int, all_pairs_rate: float) -> list[str]:
    values, planted = synthetic_hashes(real, n, np.random.default_rng(n))
    pairs, candidates, seconds, peak = timed_search(values)
    keys = pairs[:, 0] * n + pairs[:, 1]
    found = np.isin(planted[:, 0] * n + planted[:, 1], keys).mean()
    return [f"{n:,}", f"{len(planted):,}", f"{found:.2%}", f"{len(pairs) - int(found * len(planted)):,}", f"{candidates:,}",
            f"{seconds:.1f}", f"~{all_pairs_rate * n * n:,.0f}", f"{peak / 2**20:,.0f}", f"{peak / n:,.0f}"]


def all_pairs_seconds_per_pair(real: np.ndarray) -> float:
    values, _ = synthetic_hashes(real, ALL_PAIRS_SAMPLE, np.random.default_rng(0))
    start = time.perf_counter()
    all_pairs(values, MAX_BITS)
    return (time.perf_counter() - start) / ALL_PAIRS_SAMPLE**2


def shared_check(hashes: list[str]) -> str:
    values = hashes_to_array(hashes)
    start = time.perf_counter()
    groups = {frozenset(g) for g in near_duplicate_groups(values)}
    index_seconds = time.perf_counter() - start
    start = time.perf_counter()
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = all_pairs(values, MAX_BITS)
    _, component = connected_components(coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(values),) * 2))
    reference: dict[int, set[int]] = {}
    for index, label in enumerate(component.tolist()):
        reference.setdefault(label, set()).add(index)
    expected = {frozenset(g) for g in reference.values() if len(g) > 1}
    all_seconds = time.perf_counter() - start
    verdict = "identical" if groups == expected else f"DIFFERENT ({len(groups ^ expected)} groups differ)"
    return (f"shared collections: {len(values):,} images, {len(pairs):,} near pairs, {len(groups):,} groups "
            f"(largest {max(map(len, groups))}): index {index_seconds:.1f} s, all pairs {all_seconds:.1f} s, groups {verdict}")


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,400000,1000000", help="synthetic collection sizes (hashes)")
    parser.add_argument("--skip-shared", action="store_true", help="skip the all-pairs check on the shared data")
    args = parser.parse_args()
    _, hashes = shared_hashes()
    real = hashes_to_array(hashes)
    if not args.skip_shared:
        print(shared_check(hashes), flush=True)
    rate = all_pairs_seconds_per_pair(real)
    print(f"all pairs: {rate * ALL_PAIRS_SAMPLE**2:.1f} s for {ALL_PAIRS_SAMPLE:,} hashes (measured), x N^2 beyond", flush=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.append(synthetic_row(real, n, rate))
        print(" | ".join(rows[-1]), flush=True)
    print(table(["hashes", "planted pairs", "planted found", "other pairs", "candidates checked", "index s",
                 "all pairs s", "peak MB", "bytes/hash"], rows))


if __name__ == "__main__":
    main()
