"""Out-of-distribution guard: is this input like the chest X-rays the model was trained on?

Fitted at the end of training on features (N, F) of the training images and stored in the checkpoint
(``ModelMeta.ood``) as a plain dict of lists and floats (under 0.5 MB for F = 1536). The score is a Mahalanobis
distance under a probabilistic-PCA covariance of the L2-normalised features: a shrunk (Ledoit-Wolf) covariance
in the top ``k`` principal directions plus one isotropic variance for everything outside them,

    score^2 = z' Lambda^-1 z + |r|^2 / sigma^2,   z = P (x - mean),  r = (x - mean) - P' z.

The residual term is what catches most non-X-rays: photographs, noise and text land away from the subspace the
X-rays span, not far along it (a Mahalanobis distance within the subspace alone missed most of them in
tests/inference/test_ood.py). The threshold is the ``accept_rate`` quantile of out-of-fold scores of the real
X-rays it was fitted on (:func:`fit_ood_guard`), so about ``1 - accept_rate`` of real X-rays like the training
data are flagged.

What the guard reads is recorded in it (``"features"``): ``"whole_image"``, the statistics of the whole image
seen through a frozen ImageNet network (:mod:`cxrscreen.guard.network`; guards fitted by this version), or
``"penultimate"``, the classifier's own penultimate features (format version 1, still read). The penultimate
features flagged 28 of 44 lateral chest views with the bundled model; the whole-image statistics flag them all
(MODEL_CARD.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrscreen.errors import ModelError
from cxrscreen.guard.inputs import GUARD_NETWORK

METHOD = "ppca-mahalanobis"
FORMAT_VERSION = 2
GUARD_INPUTS = ("whole_image", "penultimate")
MIN_CALIBRATION = 10
REQUIRED_KEYS = ("method", "feature_dim", "mean", "components", "precision", "residual_variance", "threshold")


def fit_ood_guard(
    real_features: np.ndarray,
    groups: np.ndarray | None = None,
    accept_rate: float = 0.99,
    folds: int = 5,
    max_components: int = 32,
    features: str = "penultimate",
    network: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`fit_scored_ood_guard` without the scores."""
    return fit_scored_ood_guard(real_features, groups, accept_rate, folds, max_components, features, network, seed)[0]


def fit_scored_ood_guard(
    real_features: np.ndarray,
    groups: np.ndarray | None = None,
    accept_rate: float = 0.99,
    folds: int = 5,
    max_components: int = 32,
    features: str = "penultimate",
    network: str | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
    """(guard, the calibration scores (N,) of the images, out of fold where possible). Fit the guard on features (N, F) of real X-rays (a run's training and validation images) and set its
    threshold on out-of-fold scores.

    The images are dealt into ``folds`` folds, whole groups at a time (``groups[i]``: the image's patient or
    near-duplicate group, so that no picture is scored by a guard fitted on its own copy; default: every image its
    own group). Each fold is scored by a guard fitted on the other folds, and the threshold is the ``accept_rate``
    quantile of those N out-of-fold scores; the guard kept is fitted on all N images. Compared with fitting on the
    training images and taking the quantile of the validation images alone, the threshold rests on every image
    instead of a sixth of them (on the bundled model's training images it moved by 3 units between random
    calibration subsets, against 0.3 out of fold; MODEL_CARD.md). The out-of-fold scores are what the guard gives
    images it never saw, so they are also the model's reference for drift (:mod:`cxrscreen.metrics.reference`).

    ``k = min(max_components, n // 4, F - 1)`` principal directions are modelled (a quarter of the images at most,
    so the residual variance is not fitted away on few images). With fewer than ``MIN_CALIBRATION`` images, or
    fewer than two groups (or all images but one in one group), the threshold comes from the scores of the fitted
    images themselves, which flags more real X-rays than ``1 - accept_rate``; the dict records which
    (``calibration``). ``features`` names what the rows are (one of
    ``GUARD_INPUTS``), so that :func:`reads_whole_image` later tells the predictor which kind to hand the guard;
    ``network`` names the network that made whole-image features (:data:`cxrscreen.guard.network.GUARD_NETWORK`).
    """
    real = _as_features(real_features, "real X-ray")
    if not np.isfinite(real).all():
        raise ValueError("real X-ray features hold NaN or infinite values")
    if features not in GUARD_INPUTS:
        raise ValueError(f"features must be one of {', '.join(GUARD_INPUTS)}, got {features!r}")
    if not 0.5 <= accept_rate < 1.0:
        raise ValueError(f"accept_rate must be in [0.5, 1), got {accept_rate}")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    n_images = len(real)
    if n_images < 2:
        raise ValueError(f"the OOD guard needs at least 2 real X-rays, got {n_images}")
    group_ids = np.arange(n_images) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    if len(group_ids) != n_images:
        raise ValueError(f"{len(group_ids)} groups for {n_images} images")
    info = {"features": features, **({"network": network} if network is not None else {})}
    guard = _fit_guard_dict(real, max_components, info)
    fold = _group_folds(group_ids, folds, seed)
    # Each fold's guard is fitted on the other folds, which must hold at least two images.
    if n_images >= MIN_CALIBRATION and fold.max() >= 1 and np.bincount(fold).max() <= n_images - 2:
        scores = np.empty(n_images)
        for k in range(int(fold.max()) + 1):
            held = fold == k
            scores[held] = ood_scores(real[held], _fit_guard_dict(real, max_components, info, rows=~held))
        calibration = {"set": "out-of-fold", "images": n_images, "folds": int(fold.max()) + 1}
    else:
        scores = ood_scores(real, guard)
        calibration = {"set": "training", "images": n_images}
    guard["accept_rate"] = float(accept_rate)
    guard["threshold"] = float(np.quantile(scores, accept_rate))
    guard["calibration"] = {**calibration, "accepted": float(np.mean(accepts(scores, guard)))}
    return guard, scores


def _group_folds(group_ids: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per image (int (N,)): groups shuffled with ``seed`` and dealt round-robin; at most one fold per
    group, so two groups give two folds and one group gives one."""
    n_groups = int(group_ids.max()) + 1
    fold_of_group = np.random.default_rng(seed).permutation(n_groups) % min(folds, n_groups)
    return fold_of_group[group_ids]


def _fit_guard_dict(real: np.ndarray, max_components: int, info: dict[str, Any], rows: np.ndarray | None = None
                    ) -> dict[str, Any]:
    """A guard fitted on ``real`` (N, F), or on its ``rows`` (a mask), threshold not yet set."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these products are small, and more threads oversubscribe a machine torch already keeps busy
    # (measured 20x slower on a loaded 2-core machine).
    with threadpool_limits(1):
        # The rows are normalised as they are taken, so that no copy of them outlives this line.
        mean, components, precision, residual_variance = _fit_ppca(_l2_normalise(real if rows is None else real[rows]),
                                                                   max_components)
    return {
        "method": METHOD,
        "version": FORMAT_VERSION,
        **info,
        "feature_dim": int(real.shape[1]),
        "n_fit": int(len(real)),
        "mean": _floats(mean),
        "components": [_floats(row) for row in components],
        "precision": [_floats(row) for row in precision],
        "residual_variance": residual_variance,
        "threshold": 0.0,
    }


def _fit_ppca(unit: np.ndarray, max_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean (F,), components (k, F), precision (k, k), residual variance) of unit-length features (N, F), which
    it overwrites."""
    from sklearn.covariance import LedoitWolf
    from sklearn.utils.extmath import randomized_svd

    n_images, dim = unit.shape
    mean = unit.mean(axis=0)
    # In place, the same numbers as new arrays: a 10,000-image fit holds two (N, F) float64 arrays besides the
    # features, not five (75 KB per image before, measured).
    centred = unit
    centred -= mean
    k = max(1, min(max_components, n_images // 4, dim - 1))
    # Only the top k directions are needed: randomized SVD is ~10x faster than a full one on (N, 1280) features.
    _, _, components = randomized_svd(centred, k, random_state=0)
    projected = centred @ components.T
    precision = LedoitWolf().fit(projected).precision_
    residual = np.subtract(centred, projected @ components, out=centred)
    residual_variance = max(float(np.square(residual, out=residual).sum(axis=1).mean()) / (dim - k), 1e-12)
    return mean, components, precision, residual_variance


def ood_scores(features: np.ndarray, guard: dict[str, Any]) -> np.ndarray:
    """Distance of each row of ``features`` (N, F) from the training X-rays: float64 (N,), >= 0, larger = stranger.

    Rows holding NaN or infinity score ``inf``.
    """
    check_guard(guard)
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[1] != int(guard["feature_dim"]):
        raise ModelError(f"OOD guard: features of shape {feats.shape}, expected (N, {guard['feature_dim']}); guard and model disagree")
    mean = np.asarray(guard["mean"])
    components = np.asarray(guard["components"])
    precision = np.asarray(guard["precision"])
    finite = np.isfinite(feats).all(axis=1)
    centred = _l2_normalise(np.where(finite[:, None], feats, 0.0)) - mean
    projected = centred @ components.T
    within = np.einsum("ij,jk,ik->i", projected, precision, projected)
    outside = ((centred - projected @ components) ** 2).sum(axis=1) / float(guard["residual_variance"])
    scores = np.sqrt(np.maximum(within, 0.0) + outside)
    scores[~finite] = np.inf
    return scores


def reads_whole_image(guard: dict[str, Any] | None) -> bool:
    """True when ``guard`` was fitted on whole-image features (:mod:`cxrscreen.guard.network`), False when on the
    classifier's penultimate features (or there is no guard)."""
    return bool(guard) and guard.get("features", "penultimate") == "whole_image"


def in_distribution(features: np.ndarray, guard: dict[str, Any]) -> np.ndarray:
    """True for rows of ``features`` (N, F) the guard accepts as chest X-rays like the training data: bool (N,)."""
    return accepts(ood_scores(features, guard), guard)


def accepts(scores: np.ndarray, guard: dict[str, Any]) -> np.ndarray:
    """True where a score from :func:`ood_scores` is within the guard's threshold: bool (N,)."""
    return np.asarray(scores) <= float(guard["threshold"])


def check_guard(guard: dict[str, Any]) -> None:
    """Raise :class:`ModelError` when ``guard`` is not a guard this version can use (e.g. from a newer cxrscreen)."""
    missing = [key for key in REQUIRED_KEYS if key not in guard]
    if missing:
        raise ModelError(f"OOD guard: missing {', '.join(missing)}; refit it or retrain")
    if guard["method"] != METHOD or int(guard.get("version", 0)) > FORMAT_VERSION:
        raise ModelError(f"OOD guard: unknown method {guard['method']!r} version {guard.get('version')}")
    if guard.get("features", "penultimate") not in GUARD_INPUTS:
        raise ModelError(f"OOD guard: unknown input {guard['features']!r}")
    if reads_whole_image(guard):
        if guard.get("network") != GUARD_NETWORK:
            raise ModelError(f"OOD guard: fitted through {guard.get('network')!r}, not {GUARD_NETWORK!r}; "
                             "refit it with `cxrscreen refit-guard`")


def _as_features(features: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or (dim is not None and feats.shape[1] != dim):
        expected = f"(N, {dim})" if dim is not None else "(N, F)"
        raise ValueError(f"{what} features of shape {feats.shape}, expected {expected}")
    return feats


def _l2_normalise(feats: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: the guard looks at the direction of the features, not their magnitude."""
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def _floats(values: np.ndarray) -> list[float]:
    # float32 precision is plenty for the guard and keeps pickled checkpoints small.
    return [float(v) for v in np.asarray(values, dtype=np.float32)]
