"""Calibration: expected calibration error, Brier score, temperature scaling, reliability diagrams.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted on the validation split; it
changes how confident the probabilities are, never which class wins. The trainer stores T in the checkpoint
(``ModelMeta.temperature``) and the predictor applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

DEFAULT_BINS = 15
# A validation split the model separates perfectly pushes T towards 0 (ever sharper, never wrong there); the
# lower bound stops a few easy validation images from making the model overconfident everywhere else.
TEMPERATURE_RANGE = (0.25, 10.0)
# One scalar fitted on a handful of images follows their noise (9 validation images once gave T = 10): below this
# many, or when the fit runs into a bound of TEMPERATURE_RANGE, the trainer keeps T = 1 and says why.
MIN_CALIBRATION_IMAGES = 30


def _labels_and_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"probabilities {probs.shape} and labels {labels.shape} do not match")
    return probs, labels


@dataclass
class ReliabilityDiagram:
    """Equal-width bins of the top probability: per bin its mean confidence, accuracy and image count.

    ``edges`` (B+1,) from 0 to 1; ``confidence`` and ``accuracy`` (B,) are NaN for empty bins.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |accuracy - confidence| over the bins."""
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((gaps * self.counts[filled]).sum() / total)

    def to_dict(self) -> dict:
        def clean(values: np.ndarray) -> list:
            return [None if not np.isfinite(v) else round(float(v), 6) for v in values]

        return {
            "edges": clean(self.edges),
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
            "counts": self.counts.astype(int).tolist(),
        }


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityDiagram:
    """Bin images by their top probability (``probs`` (N, C), ``labels`` (N,) class indices) into ``n_bins``."""
    probs, labels = _labels_and_probs(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    confidence = probs.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if len(labels) else np.zeros(0, dtype=bool)
    # Bins are (lo, hi]; a confidence of exactly 0 (impossible for a softmax) would go to the first bin.
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins) / counts
    return ReliabilityDiagram(edges, mean_conf, accuracy, counts)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """ECE over ``n_bins`` equal-width bins of the top probability; in [0, 1], 0 = calibrated."""
    return reliability_diagram(probs, labels, n_bins).ece


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of sum_c (p_c - [c == label])^2; in [0, 2], 0 = perfect."""
    probs, labels = _labels_and_probs(probs, labels)
    if len(labels) == 0:
        return float("nan")
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / temperature) against ``labels``."""
    logits, labels = _labels_and_probs(logits, labels)
    log_probs = log_softmax(logits / temperature, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (N, C) logits and (N,) labels.

    The NLL is convex in 1/T, so a bounded scalar search over log T finds the optimum within
    ``TEMPERATURE_RANGE``. Returns 1.0 when there is nothing to fit (no images).
    """
    logits, labels = _labels_and_probs(logits, labels)
    if len(labels) == 0:
        return 1.0
    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


@dataclass(frozen=True)
class TemperatureChoice:
    """The temperature a run keeps: ``fitted`` is what the search found (None when there was too little to fit),
    ``note`` why T = 1 was kept instead (None when the fit was used), ``images`` the validation images it saw."""

    temperature: float
    fitted: float | None
    images: int
    note: str | None = None

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "fitted": self.fitted, "images": self.images, "note": self.note}


def choose_temperature(logits: np.ndarray, labels: np.ndarray, min_images: int = MIN_CALIBRATION_IMAGES) -> TemperatureChoice:
    """:func:`fit_temperature` where the validation split can support it; otherwise T = 1, with the reason:
    fewer than ``min_images`` images, or a fit that stopped at a bound of ``TEMPERATURE_RANGE`` (the optimum lies
    outside the range the search trusts, so the bound itself is no estimate)."""
    logits, labels = _labels_and_probs(logits, labels)
    n = len(labels)
    if n < min_images:
        return TemperatureChoice(1.0, None, n, f"temperature kept at 1: {n} validation image(s) are too few to fit "
                                              f"it (at least {min_images} needed)")
    fitted = fit_temperature(logits, labels)
    lo, hi = TEMPERATURE_RANGE
    if fitted <= lo * 1.001 or fitted >= hi / 1.001:
        return TemperatureChoice(1.0, fitted, n, f"temperature kept at 1: the fit on {n} validation images stopped at "
                                                 f"the bound of its range ({fitted:.2f}, range {lo:g}-{hi:g})")
    return TemperatureChoice(fitted, fitted, n)


def rescale_temperature(probs: np.ndarray, from_temperature: float, to_temperature: float = 1.0) -> np.ndarray:
    """Probabilities (N, C) made at one temperature, recomputed at another.

    log p = logits / T_from + const per image, so softmax(log p * T_from / T_to) = softmax(logits / T_to).
    """
    log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))
    return softmax(log_probs * (from_temperature / to_temperature), axis=1)
