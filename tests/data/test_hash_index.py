"""Multi-index hashing finds exactly the pairs an all-pairs comparison finds, without comparing all pairs."""

from __future__ import annotations

import numpy as np
import pytest

from cxrscreen.data.dedup import block_bits, near_duplicate_pairs, near_duplicates_between
from cxrscreen.data.hash_index import BlockPlan, near_pairs
from cxrscreen.errors import ConfigError


def all_pairs(queries: np.ndarray, indexed: np.ndarray | None, max_bits: int) -> set[tuple[int, int]]:
    """The reference: every pair compared (i < j within ``queries`` when ``indexed`` is None)."""
    bits = block_bits(queries, queries if indexed is None else indexed) <= max_bits
    if indexed is None:
        bits = np.triu(bits, 1)
    return set(zip(*(index.tolist() for index in np.nonzero(bits))))


def flip_bits(value: np.ndarray, positions) -> np.ndarray:
    """``value`` (uint64 (words,)) with the bits at ``positions`` (0 = most significant bit of word 0) flipped."""
    out = value.copy()
    for position in positions:
        word, shift = divmod(int(position), 64)
        out[word] ^= np.uint64(1) << np.uint64(63 - shift)
    return out


def planted_hashes(n: int, planted: int, max_bits: int, rng: np.random.Generator, words: int = 4):
    """``n`` random hashes, ``planted`` of them copies of others with 0..``max_bits`` bits flipped; returns the
    hashes and the planted pairs (i < j)."""
    values = rng.integers(0, 2**63, size=(n, words), dtype=np.uint64) << np.uint64(1)
    values |= rng.integers(0, 2, size=(n, words), dtype=np.uint64)
    chosen = rng.permutation(n)[: 2 * planted].reshape(2, planted)
    for source, copy in zip(*chosen):
        flips = rng.choice(64 * words, size=rng.integers(0, max_bits + 1), replace=False)
        values[copy] = flip_bits(values[source], flips)
    return values, {(min(a, b), max(a, b)) for a, b in zip(*chosen.tolist())}


@pytest.mark.parametrize("blocks, radius", [(13, 1), (25, 0)])
def test_pairs_at_the_threshold_are_found_however_their_differences_spread_over_the_blocks(blocks: int, radius: int) -> None:
    """The pigeonhole case: 24 differing bits spread as evenly as the blocks allow (13 blocks: 11 differ in two bits,
    two in one, found through a one-bit probe; 25 blocks: 24 differ in one bit, one block is equal); one more bit,
    in a block that differed in fewer, is no longer a pair."""
    plan = BlockPlan.strided(256, 24, blocks, radius)
    per_block = [radius + 1] * (24 // (radius + 1)) + [0] * blocks
    if radius:
        per_block[10:13] = [2, 1, 1]
    rng = np.random.default_rng(blocks)
    base = rng.integers(0, 2**63, size=(300, 4), dtype=np.uint64)
    at_threshold, beyond = [], []
    for t, value in enumerate(base):  # pairs differ at each position of the one-bit blocks in turn: every probe counts
        spread = [p for block, k in zip(plan.blocks, per_block) for p in rng.choice(block, k, replace=False)]
        if radius:
            spread[-2:] = [plan.blocks[11][t % len(plan.blocks[11])], plan.blocks[12][t % len(plan.blocks[12])]]
        at_threshold.append(flip_bits(value, spread))
        beyond.append(flip_bits(value, [*spread, next(p for p in plan.blocks[-1] if p not in spread)]))
    others = np.concatenate([at_threshold, beyond])
    expected = [[i, i] for i in range(len(base))]
    pairs, bits, _ = near_pairs(base, others, 24, plan)
    assert pairs.tolist() == expected and (bits == 24).all()
    n = len(base)  # within one set: each hash and its copy at 24 bits, and that copy and the one a bit further
    pairs, bits, _ = near_pairs(np.concatenate([base, others]), None, 24, plan)
    assert pairs.tolist() == sorted([[i, i + n] for i in range(n)] + [[i + n, i + 2 * n] for i in range(n)])
    assert bits.tolist() == [24 if i < n else 1 for i, _ in pairs.tolist()]
    with pytest.raises(ValueError, match="can miss pairs"):
        BlockPlan.strided(256, 24, blocks - 1, radius)
    assert BlockPlan.choose(256, 24, 1_000_000) == BlockPlan.strided(256, 24, 13, 1)


@pytest.mark.parametrize("max_distance", [0, 1, 2.5, 6, 9])
@pytest.mark.parametrize("words", [1, 4])
def test_same_pairs_as_comparing_all_pairs(max_distance: float, words: int) -> None:
    rng = np.random.default_rng(words * 100 + int(max_distance * 10))
    unit = words  # bits per 64-bit distance unit
    values, _ = planted_hashes(1500, 300, int(max_distance * unit) + 4, rng, words)
    values[-50:] = values[:50]  # exact copies too
    pairs, distances = near_duplicate_pairs(values, max_distance)
    expected = all_pairs(values, None, int(max_distance * unit))
    assert set(map(tuple, pairs.tolist())) == expected and len(pairs) == len(expected)
    assert np.array_equal(distances, block_bits(values, values)[pairs[:, 0], pairs[:, 1]] / unit)
    queries, reference = values[:700], values[700:]
    between, _ = near_duplicates_between(queries, reference, max_distance)
    assert set(map(tuple, between.tolist())) == all_pairs(queries, reference, int(max_distance * unit))


def test_every_planted_pair_among_twenty_thousand_hashes_is_found() -> None:
    """A small version of benchmarks/duplicates.py: >= 99.9% of planted pairs (the search is exact: all of them)."""
    values, planted = planted_hashes(20_000, 2_000, 24, np.random.default_rng(7))
    pairs, bits, candidates = near_pairs(values, None, 24)
    found = set(map(tuple, pairs.tolist()))
    assert len(planted & found) / len(planted) >= 0.999
    assert found == planted  # random 256-bit hashes are ~128 bits apart: no other pair is near
    assert candidates < 20_000**2 / 2 / 100  # far fewer comparisons than all pairs


def test_hash_widths_must_match_and_empty_inputs_have_no_pairs() -> None:
    with pytest.raises(ConfigError, match="cannot compare 64-bit hashes with 256-bit"):
        near_pairs(np.zeros((2, 1), dtype=np.uint64), np.zeros((2, 4), dtype=np.uint64), 24)
    assert near_duplicate_pairs(np.zeros((0, 4), dtype=np.uint64))[0].shape == (0, 2)
    assert near_duplicates_between(np.zeros((3, 4), dtype=np.uint64), np.zeros((0, 4), dtype=np.uint64))[0].shape == (0, 2)
