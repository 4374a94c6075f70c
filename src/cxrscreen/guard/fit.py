"""Fitting a model's out-of-distribution guard on the images it was trained on (training, ``refit-guard`` and site
adaptation all call :func:`fit_scored_guard`)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.records import Record
from cxrscreen.data.splits import record_groups
from cxrscreen.data.stack import ImageStack
from cxrscreen.guard.inputs import GUARD_ACCEPT_RATE, GUARD_NETWORK, guard_preprocessing
from cxrscreen.guard.network import torch_guard_features
from cxrscreen.guard.ppca import fit_scored_ood_guard
from cxrscreen.memory import give_back_memory

GUARD_SIDES = ("train", "val")  # the sides of a run's split the guard is fitted on


# A guard fits on at most this many images, drawn seeded from its run's: a PPCA of at most 32 components of 1,536
# features is well estimated from 10,000 images, and the fit's memory (about 60 KB per image with its folds,
# measured: 0.6 GB at 8,500 images) stays bounded whatever the collection.
GUARD_FIT_MAX = 10_000


def fit_sample(count: int, limit: int = GUARD_FIT_MAX, seed: int = 0) -> np.ndarray:
    """Sorted indices of the images a guard fits on: all of them, or ``limit`` of them drawn with ``seed``."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def fit_scored_guard(records: list[Record], hashes: Mapping[str, str], max_distance: float, progress: bool = False,
                     thumbnails: np.ndarray | ImageStack | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """(guard, out-of-fold score of each image it was fitted on; NaN for files that did not decode and images left
    out of the fit's sample). A run's out-of-distribution guard (:mod:`cxrscreen.guard.ppca`), fitted on the
    whole-image features (:mod:`cxrscreen.guard.network`) of ``records`` (its training and validation images; at
    most :data:`GUARD_FIT_MAX` of them, see :func:`fit_sample`), with the threshold set on out-of-fold scores, folds
    drawn by patient and near-duplicate group (``hashes``: path -> pHash; within ``max_distance`` bits per 64).
    ``thumbnails``: the guard's inputs of ``records``, uint8 (N, 64, 64), when the caller has them; otherwise those
    of the drawn images are read (through the cache), and files that do not decode are left out, as training left
    them out. The thumbnails are read a batch at a time."""
    groups = record_groups(records, hashes, max_distance)
    give_back_memory()  # the grouping's arrays: freed, but kept by the heap under the features' peak
    if thumbnails is None:  # only the drawn images are read (train --shards: the training side is not cached)
        drawn = fit_sample(len(records))
        prepared = load_prepared([records[i].path for i in drawn], guard_preprocessing(), progress=progress,
                                 on_bad_image="skip")
        inputs, fitted = prepared.images, drawn[np.asarray(prepared.ok, dtype=np.int64)]
    else:
        fitted = fit_sample(len(records))
        inputs = thumbnails if len(fitted) == len(records) else thumbnails[fitted]
    guard, fit_scores = fit_scored_ood_guard(torch_guard_features(inputs), groups[fitted],
                                             accept_rate=GUARD_ACCEPT_RATE, features="whole_image",
                                             network=GUARD_NETWORK)
    scores = np.full(len(records), np.nan)
    scores[fitted] = fit_scores
    return guard, scores
