"""Fitting a model's out-of-distribution guard on the images it was trained on (training, ``refit-guard`` and site
adaptation all call :func:`fit_guard`)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cxrscreen.data.imageio import to_float
from cxrscreen.data.records import Record
from cxrscreen.data.splits import record_groups
from cxrscreen.guard.inputs import GUARD_ACCEPT_RATE, GUARD_NETWORK, guard_thumbnails
from cxrscreen.guard.network import torch_guard_features
from cxrscreen.guard.ppca import fit_scored_ood_guard

GUARD_SIDES = ("train", "val")  # the sides of a run's split the guard is fitted on


def fit_guard(records: list[Record], hashes: Mapping[str, str], max_distance: float, progress: bool = False,
              thumbnails: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`fit_scored_guard` without the scores."""
    return fit_scored_guard(records, hashes, max_distance, progress, thumbnails)[0]


def fit_scored_guard(records: list[Record], hashes: Mapping[str, str], max_distance: float, progress: bool = False,
                     thumbnails: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """(guard, out-of-fold score of each image it was fitted on, NaN for files that did not decode). A run's out-of-distribution guard (:mod:`cxrscreen.guard.ppca`), fitted on the whole-image features
    (:mod:`cxrscreen.guard.network`) of ``records`` (its training and validation images), with the threshold
    set on out-of-fold scores, folds drawn by patient and near-duplicate group (``hashes``: path -> pHash; within
    ``max_distance`` bits per 64). ``thumbnails``: the guard's inputs of ``records``, uint8 (N, 64, 64), when the
    caller has them; otherwise they are read (through the cache), and files that do not decode are left out, as
    training left them out."""
    groups = record_groups(records, hashes, max_distance)
    if thumbnails is None:
        inputs, ok = guard_thumbnails([r.path for r in records], progress, on_bad_image="skip")
    else:
        inputs, ok = to_float(thumbnails), list(range(len(records)))
    guard, fitted = fit_scored_ood_guard(torch_guard_features(inputs), groups[ok], accept_rate=GUARD_ACCEPT_RATE,
                                         features="whole_image", network=GUARD_NETWORK)
    scores = np.full(len(records), np.nan)
    scores[ok] = fitted
    return guard, scores
