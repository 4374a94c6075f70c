"""What runs the classifier: the backend protocol, torch eager, and the softmax every backend's logits go through.

(ONNX Runtime's backend, which needs no torch, is in :mod:`cxrscreen.inference.onnx_runtime`.) torch is imported
where a network runs in it, so that the ONNX path and the command line's start-up do not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    from cxrscreen.models.registry import XrayClassifier


class InferenceBackend(Protocol):
    """Runs the network: inputs float32 (N, 1, S, S) in [0, 1] -> (logits (N, C), features (N, F)), float32.
    ``explains``: whether :meth:`run_with_maps` also gives every class's Grad-CAM map (N, C, S, S), not normalised,
    from the same forward pass (:mod:`cxrscreen.explain.analytic`)."""

    explains: bool

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def run_with_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class NetOutputs(NamedTuple):
    """The answer for a batch: ``probs`` (N, C) temperature-scaled, ``features`` (N, F) the classifier's
    penultimate features, ``guard_features`` (N, G) the whole-image features of
    :mod:`cxrscreen.guard.network`, or None when the guard does not read them or no thumbnails were given."""

    probs: np.ndarray
    features: np.ndarray
    guard_features: np.ndarray | None


class TorchBackend:
    """Eager PyTorch in inference mode on ``device`` (``cpu`` or ``cuda``); channels-last memory layout when it is
    faster for the network."""

    def __init__(self, model: XrayClassifier, channels_last: bool = True, device: str = "cpu"):
        import torch

        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def explains(self) -> bool:
        from cxrscreen.explain.analytic import explains_analytically

        return explains_analytically(self.model)

    def _input(self, batch: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            features = self.model.features(self._input(batch))
            logits = self.model.head(features)
        return logits.float().cpu().numpy(), features.float().cpu().numpy()

    def run_with_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        from cxrscreen.explain.analytic import ScoresAndMaps

        with torch.inference_mode():
            outputs = ScoresAndMaps(self.model)(self._input(batch))
        logits, features, maps = (tensor.float().cpu().numpy() for tensor in outputs)
        return logits, features, maps


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (N, C) -> probabilities (N, C) in float64, rows summing to 1."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)
