"""Cross-validation folds that never put one patient, or one picture, in two folds.

The groups are the split's (:func:`cxrscreen.data.splits.record_groups`: same patient or near-duplicate pictures)
and they are dealt to k equal parts by :func:`cxrscreen.data.splits.assign_groups`, which keeps each class's share
in every fold. The same dealing, with two unequal parts, gives each fold's inner early-stopping split.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cxrscreen.data.splits import assign_groups


def make_folds(groups: np.ndarray, targets: np.ndarray, num_classes: int, k: int, seed: int) -> np.ndarray:
    """Fold index in [0, k) per image (int64 (N,)): whole groups (``groups`` (N,)) per fold, classes stratified."""
    return assign_groups(np.asarray(groups), np.asarray(targets), num_classes, [1.0 / k] * k, seed)


def inner_split(indices: np.ndarray, groups: np.ndarray, targets: np.ndarray, num_classes: int, fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``indices`` split into (train, validation) by group, about ``fraction`` of each class in validation."""
    _, local_groups = np.unique(groups[indices], return_inverse=True)
    side = assign_groups(local_groups, targets[indices], num_classes, [1.0 - fraction, fraction], seed)
    return indices[side == 0], indices[side == 1]


def draw_per_class(pool: np.ndarray, targets: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``size`` images of each class drawn from ``pool`` (indices), sorted; a class with fewer gives all."""
    chosen = [rng.permutation(pool[targets[pool] == c])[:size] for c in np.unique(targets[pool])]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def fold_sizes(folds: np.ndarray, targets: np.ndarray, classes: Sequence[str], k: int) -> list[dict[str, int]]:
    """Images per class in each fold (for the log and adapt.json)."""
    return [{name: int(((folds == f) & (targets == c)).sum()) for c, name in enumerate(classes)} for f in range(k)]
