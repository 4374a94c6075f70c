"""Out-of-distribution guard: is this input like the chest X-rays the model was trained on?

Fitted at the end of training on features (N, F) of the training images and stored in the checkpoint
(``ModelMeta.ood``) as a plain dict of lists and floats (under 0.5 MB for F = 1536). The score is a Mahalanobis
distance under a probabilistic-PCA covariance of the L2-normalised features: a shrunk (Ledoit-Wolf) covariance
in the top ``k`` principal directions plus one isotropic variance for everything outside them,

    score^2 = z' Lambda^-1 z + |r|^2 / sigma^2,   z = P (x - mean),  r = (x - mean) - P' z.

The residual term is what catches most non-X-rays: photographs, noise and text land away from the subspace the
X-rays span, not far along it (a Mahalanobis distance within the subspace alone missed most of them in
tests/inference/test_ood.py). The threshold is the ``accept_rate`` quantile (default 99%) of the scores of
held-out real X-rays (the validation set), so about 1% of real X-rays like the training data are flagged.

What the guard reads is recorded in it (``"features"``): ``"whole_image"``, the statistics of the whole image
seen through a frozen ImageNet network (:mod:`cxrscreen.models.guard_net`; guards fitted by this version), or
``"penultimate"``, the classifier's own penultimate features (format version 1, still read). The penultimate
features flagged 28 of 44 lateral chest views with the bundled model; the whole-image statistics flag them all
(MODEL_CARD.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrscreen.errors import ModelError

METHOD = "ppca-mahalanobis"
FORMAT_VERSION = 2
GUARD_INPUTS = ("whole_image", "penultimate")
MIN_CALIBRATION = 10
REQUIRED_KEYS = ("method", "feature_dim", "mean", "components", "precision", "residual_variance", "threshold")


def fit_ood_guard(
    train_features: np.ndarray,
    val_features: np.ndarray | None = None,
    accept_rate: float = 0.99,
    max_components: int = 32,
    features: str = "penultimate",
    network: str | None = None,
) -> dict[str, Any]:
    """Fit the guard on training features (N, F) and set its threshold on validation features (M, F).

    ``k = min(max_components, N // 4, F - 1)`` principal directions are modelled (a quarter of the images at most,
    so the residual variance is not fitted away on few images). With fewer than ``MIN_CALIBRATION`` validation
    rows the threshold comes from the training features themselves, which flags more real X-rays than
    ``1 - accept_rate``; the dict records which set calibrated it. ``features`` names what the rows are (one of
    ``GUARD_INPUTS``), so that :func:`reads_whole_image` later tells the predictor which kind to hand the guard;
    ``network`` names the network that made whole-image features (:data:`cxrscreen.models.guard_net.GUARD_NETWORK`).
    """
    from threadpoolctl import threadpool_limits

    train = _as_features(train_features, "training")
    if not np.isfinite(train).all():
        raise ValueError("training features hold NaN or infinite values")
    if features not in GUARD_INPUTS:
        raise ValueError(f"features must be one of {', '.join(GUARD_INPUTS)}, got {features!r}")
    if not 0.5 <= accept_rate < 1.0:
        raise ValueError(f"accept_rate must be in [0.5, 1), got {accept_rate}")
    n_images, dim = train.shape
    if n_images < 2:
        raise ValueError(f"the OOD guard needs at least 2 training images, got {n_images}")
    # One BLAS thread: these products are small, and more threads oversubscribe a machine torch already keeps busy
    # (measured 20x slower on a loaded 2-core machine).
    with threadpool_limits(1):
        mean, components, precision, residual_variance = _fit_ppca(_l2_normalise(train), max_components)
    guard: dict[str, Any] = {
        "method": METHOD,
        "version": FORMAT_VERSION,
        "features": features,
        **({"network": network} if network is not None else {}),
        "feature_dim": int(dim),
        "n_fit": int(n_images),
        "mean": _floats(mean),
        "components": [_floats(row) for row in components],
        "precision": [_floats(row) for row in precision],
        "residual_variance": residual_variance,
        "accept_rate": float(accept_rate),
        "threshold": 0.0,
    }
    val = None if val_features is None else _as_features(val_features, "validation", dim)
    calibration_set, calibration = ("validation", val) if val is not None and len(val) >= MIN_CALIBRATION else ("training", train)
    scores = ood_scores(calibration, guard)
    if not np.isfinite(scores).any():
        raise ValueError(f"{calibration_set} features hold no finite row to set the threshold on")
    guard["threshold"] = float(np.quantile(scores[np.isfinite(scores)], accept_rate))
    guard["calibration"] = {
        "set": calibration_set,
        "images": int(len(calibration)),
        "accepted": float(np.mean(scores <= guard["threshold"])),
    }
    return guard


def _fit_ppca(unit: np.ndarray, max_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean (F,), components (k, F), precision (k, k), residual variance) of unit-length features (N, F)."""
    from sklearn.covariance import LedoitWolf
    from sklearn.utils.extmath import randomized_svd

    n_images, dim = unit.shape
    mean = unit.mean(axis=0)
    centred = unit - mean
    k = max(1, min(max_components, n_images // 4, dim - 1))
    # Only the top k directions are needed: randomized SVD is ~10x faster than a full one on (N, 1280) features.
    _, _, components = randomized_svd(centred, k, random_state=0)
    projected = centred @ components.T
    precision = LedoitWolf().fit(projected).precision_
    residual = centred - projected @ components
    residual_variance = max(float((residual**2).sum(axis=1).mean()) / (dim - k), 1e-12)
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
    """True when ``guard`` was fitted on whole-image features (:mod:`cxrscreen.models.guard_net`), False when on the
    classifier's penultimate features (or there is no guard)."""
    return bool(guard) and guard.get("features", "penultimate") == "whole_image"


def in_distribution(features: np.ndarray, guard: dict[str, Any]) -> np.ndarray:
    """True for rows of ``features`` (N, F) the guard accepts as chest X-rays like the training data: bool (N,)."""
    return ood_scores(features, guard) <= float(guard["threshold"])


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
        from cxrscreen.models.guard_net import GUARD_NETWORK

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
