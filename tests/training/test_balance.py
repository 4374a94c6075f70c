"""The --balance sampler on a toy multi-source training set: cell quotas, the cap, determinism and DDP slices."""

from __future__ import annotations

import numpy as np
import pytest

from cxrscreen.errors import ConfigError
from cxrscreen.training.sampler import BalancedSampler, balance_cells, cell_quotas
from cxrscreen.training.steps import class_weights

CLASSES = ["covid", "normal", "viral"]
COLLECTIONS = ["a", "b", "c"]
# (class, collection, images): 100 training images in 5 (class, collection) cells.
TOY = [("covid", "a", 40), ("normal", "a", 10), ("normal", "b", 45), ("viral", "b", 3), ("viral", "c", 2)]


def toy_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets and source ids of the toy set, in a shuffled order (cells are not contiguous)."""
    targets = np.concatenate([[CLASSES.index(c)] * n for c, _, n in TOY])
    sources = np.concatenate([[COLLECTIONS.index(s)] * n for _, s, n in TOY])
    order = np.random.default_rng(seed).permutation(len(targets))
    return targets[order], sources[order]


def toy_sampler(mode: str = "class_source", cap: float = 5.0) -> BalancedSampler:
    targets, sources = toy_arrays()
    cells, names = balance_cells(mode, targets, sources, CLASSES, COLLECTIONS)
    return BalancedSampler(cells, names, cap)


def test_cells_follow_the_mode() -> None:
    targets, sources = toy_arrays()
    cells, names = balance_cells("class_source", targets, sources, CLASSES, COLLECTIONS)
    assert names == ("covid/a", "normal/a", "normal/b", "viral/b", "viral/c")
    assert np.bincount(cells).tolist() == [40, 10, 45, 3, 2]
    assert balance_cells("class", targets, sources, CLASSES, COLLECTIONS)[1] == ("covid", "normal", "viral")
    assert np.bincount(balance_cells("source", targets, sources, CLASSES, COLLECTIONS)[0]).tolist() == [50, 48, 2]


def test_quotas_share_evenly_and_cap_small_cells() -> None:
    # 100 draws over 5 cells: 20 each. Cap 5: viral/c (2 images) may take 10 and viral/b (3 images) 15, both under
    # 20, so they are capped; the 75 draws left go evenly to the other three cells: 25 each.
    assert toy_sampler(cap=5.0).quotas.tolist() == [25, 25, 25, 15, 10]
    # Cap 10: viral/c's limit is 20 = its even share (capped, same count), viral/b's 30 is above it: 20 each.
    assert toy_sampler(cap=10.0).quotas.tolist() == [20, 20, 20, 20, 20]
    # Capping cascades: after a (cap 1: 2 draws) is capped, 98 draws over 2 cells = 49 each, above b's limit 45,
    # so b is capped too and c takes the rest.
    assert cell_quotas(np.array([2, 45, 53]), 100, 1.0).tolist() == [2, 45, 53]
    # An uneven share: the first uncapped cells get one draw more.
    assert cell_quotas(np.array([50, 50, 50]), 100, 10.0).tolist() == [34, 33, 33]


def test_draw_counts_match_the_quotas_and_repeat_images_evenly() -> None:
    sampler = toy_sampler(cap=5.0)
    draw = sampler.draw(epoch=1, seed=0)
    assert len(draw) == len(sampler.cells) == 100
    counts = np.bincount(sampler.cells[draw], minlength=len(sampler.names))
    assert counts.tolist() == sampler.quotas.tolist()
    per_image = np.bincount(draw, minlength=100)
    for cell, quota in enumerate(sampler.quotas):
        members = per_image[sampler.cells == cell]
        size = len(members)
        # each image quota // size times, some once more; a cell drawn less than its size has no repeats
        assert set(members.tolist()) <= {quota // size, quota // size + 1}
    assert per_image[sampler.cells == sampler.names.index("viral/c")].tolist() == [5, 5]


def test_class_weights_count_the_draws_not_the_images() -> None:
    # Cap 5 draws covid 25, normal 25 + 25, viral 15 + 10 times per epoch: weights 100 / (3 x (25, 50, 25)), not
    # the inverse of the image counts (40, 55, 5), which would weight viral up again after the sampler did.
    sampler = toy_sampler(cap=5.0)
    draws = sampler.draws_per_image()
    assert np.isclose(draws.sum(), 100)
    assert np.allclose(draws[sampler.cells == sampler.names.index("normal/a")], 2.5)
    targets, _ = toy_arrays()
    weights = class_weights(targets, 3, draws).numpy()
    assert np.allclose(weights, [100 / 75, 100 / 150, 100 / 75])


def test_draw_is_seeded_and_changes_per_epoch() -> None:
    sampler = toy_sampler()
    first = sampler.draw(epoch=1, seed=0)
    assert np.array_equal(first, toy_sampler().draw(epoch=1, seed=0))
    assert not np.array_equal(first, sampler.draw(epoch=2, seed=0))
    assert not np.array_equal(first, sampler.draw(epoch=1, seed=1))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_disjoint_slices_of_one_draw(world_size: int) -> None:
    sampler = toy_sampler()
    draw = sampler.draw(epoch=3, seed=7)
    slices = [sampler.rank_indices(epoch=3, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = 100 // world_size
    assert all(len(s) == per_rank for s in slices)
    interleaved = np.stack(slices, axis=1).reshape(-1)  # rank r holds positions r, r + world_size, ...
    assert np.array_equal(interleaved, draw[: per_rank * world_size])


def test_cap_below_one_cannot_fill_an_epoch() -> None:
    with pytest.raises(ConfigError, match="at most 0.5 times"):
        cell_quotas(np.array([10, 10]), 20, 0.5)
