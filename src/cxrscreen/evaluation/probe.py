"""Source probe: can a linear classifier tell which collection (hospital) an image came from, given only the
model's penultimate features?

A model that encodes the source can score well by recognising the hospital instead of the disease (the shortcut
the Radiography Database invites). The probe's cross-validated accuracy is compared with the majority-class rate
(always guessing the largest source): far above it means the features carry the source.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrscreen.errors import ConfigError

DEFAULT_FOLDS = 5


@dataclass
class ProbeResult:
    """Cross-validated source probe.

    ``accuracy``: share of images whose source the probe predicted right (out of fold); ``majority_rate``: the
    share of the largest source (what always guessing it scores); ``balanced_accuracy`` against ``chance`` =
    1 / number of sources. ``left_out`` counts images of sources too small for ``folds``-fold CV (source -> n).
    """

    accuracy: float
    majority_rate: float
    balanced_accuracy: float
    chance: float
    n_images: int
    folds: int
    sources: dict[str, int]
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def encodes_source(self) -> bool:
        """True when the probe beats the majority rate by a clear margin (half the way to perfect)."""
        return self.accuracy >= self.majority_rate + 0.5 * (1.0 - self.majority_rate)

    def summary(self) -> str:
        return (f"source probe: {self.accuracy:.1%} accuracy telling {len(self.sources)} sources apart "
                f"({self.folds}-fold CV, {self.n_images} images) vs {self.majority_rate:.1%} by always guessing the "
                f"largest; balanced {self.balanced_accuracy:.1%} vs chance {self.chance:.1%}"
                + (" -> the features encode the source" if self.encodes_source else ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": round(self.accuracy, 6),
            "majority_rate": round(self.majority_rate, 6),
            "balanced_accuracy": round(self.balanced_accuracy, 6),
            "chance": round(self.chance, 6),
            "n_images": self.n_images,
            "folds": self.folds,
            "sources": dict(self.sources),
            "left_out": dict(self.left_out),
            "encodes_source": self.encodes_source,
        }


def source_probe(features: np.ndarray, sources: Sequence[str], folds: int = DEFAULT_FOLDS, seed: int = 0) -> ProbeResult:
    """Stratified ``folds``-fold CV accuracy of a logistic regression predicting ``sources`` (N,) from
    ``features`` (N, F) (standardised inside each fold).

    Sources with fewer than ``folds`` images are left out (and counted). Raises :class:`ConfigError` when fewer
    than two sources remain.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray([str(s) for s in sources])
    if features.ndim != 2 or len(features) != len(labels):
        raise ConfigError(f"features of shape {features.shape} do not match {len(labels)} sources")
    if folds < 2:
        raise ConfigError(f"folds must be at least 2, got {folds}")
    counts = Counter(labels.tolist())
    left_out = {s: n for s, n in counts.items() if n < folds}
    keep = np.array([s not in left_out for s in labels], dtype=bool)
    kept = {s: n for s, n in counts.most_common() if s not in left_out}
    if len(kept) < 2:
        raise ConfigError(
            f"source probe needs at least two sources with {folds} or more images each (found: "
            f"{', '.join(f'{s} {n}' for s, n in counts.most_common()) or 'none'})"
        )
    x, y = features[keep], labels[keep]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A probe that has not fully converged is still a valid (if conservative) probe.
        warnings.simplefilter("ignore", ConvergenceWarning)
        predicted = cross_val_predict(probe, x, y, cv=splitter)
    return ProbeResult(
        accuracy=float((predicted == y).mean()),
        majority_rate=max(kept.values()) / len(y),
        balanced_accuracy=float(balanced_accuracy_score(y, predicted)),
        chance=1.0 / len(kept),
        n_images=int(len(y)),
        folds=folds,
        sources=kept,
        left_out=left_out,
    )
