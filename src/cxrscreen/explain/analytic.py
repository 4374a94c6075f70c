"""Grad-CAM without a backward pass: every class's map from the same forward pass that scores the image.

cxrscreen's classifier pools the backbone's output and applies a linear head (:class:`XrayClassifier`). When the
backbone's output is an elementwise function g of the Grad-CAM layer's activations A (a ReLU6 for EfficientNet-Lite,
a ReLU for DenseNet: :meth:`Backbone.target_slope` gives g'), the gradient of class c's logit is known in closed form:
d logit_c / d A_k(i, j) = w_ck g'(A_k(i, j)) / (h w). Grad-CAM's channel weight is its spatial mean, so the map is
ReLU(sum_k w_ck mean(g'(A_k)) A_k) / (h w), exactly what :class:`~cxrscreen.explain.gradcam.GradCam` gets by
autograd (``tests/explain/test_analytic.py`` compares them). Without gradients it runs in inference mode and inside
the exported ONNX graph (output ``maps``), so the ONNX backend explains without torch, in about a millisecond more
than predicting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrscreen.explain.gradcam import captured_outputs, find_layer
from cxrscreen.models.registry import Backbone, XrayClassifier


def explains_analytically(model: XrayClassifier) -> bool:
    """Whether ``model``'s backbone states the slope Grad-CAM needs (:meth:`Backbone.target_slope`)."""
    return type(model.backbone).target_slope is not Backbone.target_slope


def class_maps(activations: torch.Tensor, slope: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """Grad-CAM maps of every class, (N, C, size, size), not normalised: ``activations`` (N, K, h, w) of the target
    layer, ``slope`` (N, K, h, w) of the backbone's tail at them, ``weight`` (C, K) of the linear head."""
    h, w = activations.shape[-2:]
    channel_weights = weight[None] * slope.mean(dim=(2, 3))[:, None, :] / (h * w)  # (N, C, K)
    maps = F.relu(torch.einsum("nck,nkhw->nchw", channel_weights, activations))
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


class ScoresAndMaps(nn.Module):
    """The classifier answering ``(logits (N, C), features (N, F), maps (N, C, S, S))`` for inputs (N, 1, S, S):
    its logits, penultimate features and every class's Grad-CAM map (:func:`class_maps`), in one forward pass."""

    def __init__(self, model: XrayClassifier):
        super().__init__()
        if not explains_analytically(model):
            raise TypeError(f"{type(model.backbone).__name__} states no target_slope: use GradCam")
        self.model = model
        self.layer = find_layer(model, model.target_layer)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with captured_outputs(self.layer) as captured:
            features = self.model.features(x)
        activations = captured[-1]
        logits = self.model.head(features)
        slope = self.model.backbone.target_slope(activations)
        return logits, features, class_maps(activations, slope, self.model.head.weight, x.shape[-1])

