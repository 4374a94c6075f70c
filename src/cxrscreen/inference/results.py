"""What prediction gives back: a :class:`Prediction`, a :class:`PredictionFailure` or an :class:`Explanation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrscreen import SCREENING_NOTICE
from cxrscreen.data import transforms
from cxrscreen.inference.options import Decision


@dataclass
class Prediction:
    """One image's result. ``probabilities`` (class -> p, summing to 1) are temperature-scaled.

    ``label`` is the class chosen by :func:`decide` (the most probable class unless decision thresholds are set),
    or ``"not a chest X-ray?"`` when the OOD guard rejects the image (``in_distribution`` False).
    ``decision`` says how the label was chosen (rule and cut-off; None when the guard rejected the image). ``ood_score``
    is None when the model has no guard; ``lungs_found`` is None when the model's preprocessing does not look for
    the lungs. ``known_limits``: the model's known weaknesses (:attr:`Predictor.known_limits`).
    """

    source: str
    label: str
    probabilities: dict[str, float]
    in_distribution: bool
    ood_score: float | None
    lungs_found: bool | None
    known_limits: list[str] = field(default_factory=list)
    decision: Decision | None = None

    @property
    def top_class(self) -> str:
        """The most probable class, even when the image was flagged as out of distribution."""
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "in_distribution": self.in_distribution,
            "ood_score": self.ood_score,
            "lungs_found": self.lungs_found,
            "decision": self.decision.to_dict() if self.decision else None,
            "known_limits": list(self.known_limits),
            "notice": SCREENING_NOTICE,
        }


@dataclass
class PredictionFailure:
    """An input that could not be predicted: ``source`` (path or name) and the one-line ``reason``."""

    source: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "error": self.reason}

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class Explanation:
    """Grad-CAM for one image: ``heatmap`` float32 (H, W) in [0, 1] at the input image's size (zero outside the
    part of the image the network saw), the X-ray with the heatmap overlaid as PNG bytes (empty when ``explain(overlay=False)``), the class it explains,
    and ``prepared``: the network input it explains, with its frame in the image (the same one
    :meth:`Predictor.predict` scores)."""

    heatmap: np.ndarray
    overlay_png: bytes
    target: str
    prepared: transforms.Prepared
