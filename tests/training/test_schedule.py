"""Unit tests of the training loop's pieces."""

from __future__ import annotations

import numpy as np

from cxrscreen.training.steps import class_weights, lr_at, rank_indices


def test_class_weights_balance_the_classes() -> None:
    targets = np.array([0] * 90 + [1] * 10)
    weights = class_weights(targets, 2).numpy()
    assert np.isclose(weights[0] * 90, weights[1] * 10)
    assert np.isclose((weights * np.array([90, 10])).sum(), 100)


def test_learning_rate_warms_up_then_decays() -> None:
    rates = [lr_at(step, 100, 10, 1e-3) for step in range(100)]
    assert rates[0] < rates[9] == 1e-3
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] < 0.05e-3


def test_ranks_get_disjoint_shares_that_change_per_epoch() -> None:
    first = rank_indices(101, epoch=1, seed=0, rank=0, world_size=2)
    second = rank_indices(101, epoch=1, seed=0, rank=1, world_size=2)
    assert not set(first) & set(second)
    assert len(first) == len(second) == 50
    assert not np.array_equal(first, rank_indices(101, epoch=2, seed=0, rank=0, world_size=2))
    assert np.array_equal(first, rank_indices(101, epoch=1, seed=0, rank=0, world_size=2))
