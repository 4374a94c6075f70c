"""Near pairs of binary hashes without comparing all pairs: multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012).

The hash bits are dealt into ``m`` blocks. If two hashes differ in at most ``T`` bits and ``m * (radius + 1) > T``,
then by the pigeonhole principle some block differs in at most ``radius`` bits. So the candidates of a hash are the
hashes whose key in some block equals its own (radius 0) or its own with one bit flipped (radius 1); every candidate
is then checked on the whole hash. The search is exact: it finds every pair within ``T`` bits, and only those.

One block at a time, the hashes are sorted by key and a table of bucket starts gives each probed key its range;
candidates are checked in chunks, and the pairs found kept once, so memory grows linearly with the number of hashes
(and the number of pairs found). Blocks take bits at a stride (bit ``j``, ``j + m``,
...) rather than runs of neighbours, because a pHash lists its DCT coefficients row by row and the lowest
frequencies, on which chest X-rays agree most, would otherwise fill one block and one crowded bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrscreen.errors import ConfigError

# Candidate pairs checked at once: ~100 MB of gathers and distances, whatever the number of hashes.
CHUNK_CANDIDATES = 2_000_000
# Keys are looked up in a table of bucket starts (2**bits entries), far faster than a binary search per probe.
MAX_KEY_BITS = 22


@dataclass(frozen=True)
class BlockPlan:
    """How hashes of ``total_bits`` bits are searched for pairs within ``max_bits``: ``blocks`` lists the bit
    positions of each block; pairs share a block key within ``radius`` (0 or 1) bits."""

    total_bits: int
    max_bits: int
    blocks: tuple[tuple[int, ...], ...]
    radius: int

    @classmethod
    def choose(cls, total_bits: int, max_bits: int, n_indexed: int) -> "BlockPlan":
        """The plan with the fewest expected probes and candidates per hash, for ``n_indexed`` uniform hashes."""
        plans = []
        # Beyond total_bits every pair is near; radius 1 over blocks of one or two bits still finds them all.
        needed = min(max_bits, total_bits)
        for radius in (0, 1):
            for m in range(needed // (radius + 1) + 1, total_bits + 1):
                if -(-total_bits // m) <= MAX_KEY_BITS:
                    bits = total_bits / m
                    plans.append((m * (1 + radius * bits) * (1 + n_indexed / 2.0**bits), m, radius))
        _, m, radius = min(plans)
        return cls.strided(total_bits, max_bits, m, radius)

    @classmethod
    def strided(cls, total_bits: int, max_bits: int, m: int, radius: int) -> "BlockPlan":
        """``m`` blocks, block ``j`` of bits ``j, j + m, j + 2m, ...``."""
        if m * (radius + 1) <= min(max_bits, total_bits):
            raise ValueError(f"{m} blocks searched within {radius} bits can miss pairs {max_bits} bits apart")
        return cls(total_bits, max_bits, tuple(tuple(range(j, total_bits, m)) for j in range(m)), radius)


def block_keys(values: np.ndarray, positions: tuple[int, ...]) -> np.ndarray:
    """The bits of ``values`` (uint64 (N, words)) at ``positions`` (0 = most significant bit of word 0) as int64 keys."""
    keys = np.zeros(len(values), dtype=np.int64)
    for k, position in enumerate(positions):
        word, shift = divmod(position, 64)
        bit = (values[:, word] >> np.uint64(63 - shift)) & np.uint64(1)
        keys |= bit.astype(np.int64) << k
    return keys


class PairCollector:
    """Checks candidate pairs on whole hashes and keeps those within ``max_bits`` (``a`` indexes ``queries``,
    ``b`` indexes ``indexed``)."""

    def __init__(self, queries: np.ndarray, indexed: np.ndarray, max_bits: int, self_join: bool) -> None:
        self.query_words = [np.ascontiguousarray(queries[:, w]) for w in range(queries.shape[1])]
        self.indexed_words = self.query_words if self_join else [np.ascontiguousarray(indexed[:, w]) for w in range(indexed.shape[1])]
        self.max_bits = max_bits
        self.self_join = self_join
        self.found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.candidates = 0

    def check(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.self_join:  # each pair is met once, from either side
            a, b = np.minimum(a, b), np.maximum(a, b)
        self.candidates += len(a)
        bits = np.zeros(len(a), dtype=np.uint16)
        for qw, iw in zip(self.query_words, self.indexed_words):
            bits += np.bitwise_count(qw[a] ^ iw[b])
        near = bits <= self.max_bits
        if near.any():
            self.found.append((a[near], b[near], bits[near]))

    def compact(self) -> None:
        """Keep each pair found once (a pair close in several blocks is found in each), sorted by (a, b)."""
        if self.found:
            a, b, bits = (np.concatenate([f[k] for f in self.found]) for k in range(3))
            width = len(self.indexed_words[0])
            unique, first = np.unique(a.astype(np.int64) * width + b, return_index=True)
            self.found = [(unique // width, unique % width, bits[first])]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Unique pairs (K, 2) int64 sorted by (a, b), and their differing bits (K,) int64."""
        self.compact()
        if not self.found:
            return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
        a, b, bits = self.found[0]
        return np.stack([a, b], axis=1).astype(np.int64), bits.astype(np.int64)


def expand_ranges(queries: np.ndarray, lo: np.ndarray, hi: np.ndarray, order: np.ndarray, collector: PairCollector) -> None:
    """Hand ``collector`` every (query, order[p]) for p in [lo, hi), in chunks of about CHUNK_CANDIDATES pairs."""
    counts = hi - lo
    nonempty = counts > 0
    queries, lo, counts = queries[nonempty], lo[nonempty], counts[nonempty]
    ends = np.cumsum(counts)
    start = 0
    while start < len(queries):
        base = ends[start] - counts[start]
        stop = max(start + 1, int(np.searchsorted(ends, base + CHUNK_CANDIDATES, side="right")))
        c = counts[start:stop]
        offsets = np.repeat(lo[start:stop] - (ends[start:stop] - c - base), c)
        positions = np.arange(int(c.sum()), dtype=np.int64) + offsets
        collector.check(np.repeat(queries[start:stop], c), order[positions])
        start = stop


def search_block(query_keys: np.ndarray, indexed_keys: np.ndarray, bits: int, radius: int, self_join: bool,
                 collector: PairCollector) -> None:
    """Candidates whose keys are equal, or (radius 1) one bit apart, in one block."""
    order = np.argsort(indexed_keys, kind="stable")
    starts = np.zeros(2**bits + 1, dtype=np.int64)
    np.cumsum(np.bincount(indexed_keys, minlength=2**bits), out=starts[1:])
    everyone = np.arange(len(query_keys), dtype=np.int64)
    if self_join:  # equal keys: each hash meets those after it in the sorted run
        expand_ranges(order, everyone + 1, starts[indexed_keys[order] + 1], order, collector)
    else:
        expand_ranges(everyone, *key_ranges(starts, query_keys), order, collector)
    for k in range(bits if radius else 0):
        flip = np.int64(1) << k
        if self_join:  # a pair one bit apart is found from the hash whose bit is 0 only
            up = np.flatnonzero((query_keys & flip) == 0)
            expand_ranges(up, *key_ranges(starts, query_keys[up] | flip), order, collector)
        else:
            expand_ranges(everyone, *key_ranges(starts, query_keys ^ flip), order, collector)


def key_ranges(starts: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the indexed hashes with each of ``keys`` lie in the sorted order: [lo, hi)."""
    return starts[keys], starts[keys + 1]


def near_pairs(
    queries: np.ndarray, indexed: np.ndarray | None, max_bits: int, plan: BlockPlan | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs of hashes (uint64 (N, words)) at most ``max_bits`` apart: (a, b) with a < b within ``queries`` when
    ``indexed`` is None, else a in ``queries`` and b in ``indexed``. Returns pairs (K, 2) int64 sorted, their
    differing bits (K,) int64, and how many candidates were checked. ``plan``: the blocks (default: chosen for the
    number of hashes, :meth:`BlockPlan.choose`)."""
    self_join = indexed is None
    indexed = queries if indexed is None else indexed
    if len(queries) and len(indexed) and queries.shape[1] != indexed.shape[1]:
        raise ConfigError(f"cannot compare {queries.shape[1] * 64}-bit hashes with {indexed.shape[1] * 64}-bit hashes")
    collector = PairCollector(queries, indexed, max_bits, self_join)
    if max_bits >= 0 and len(queries) and len(indexed):
        plan = plan or BlockPlan.choose(indexed.shape[1] * 64, max_bits, len(indexed))
        for positions in plan.blocks:
            keys = block_keys(indexed, positions)
            search_block(keys if self_join else block_keys(queries, positions), indexed_keys=keys,
                         bits=len(positions), radius=plan.radius, self_join=self_join, collector=collector)
            collector.compact()
    pairs, bits = collector.pairs()
    return pairs, bits, collector.candidates
