"""One registry for every classifier architecture (as timm's ``register_model``), and the classifier around them.

An entry declares, as data, what the rest of the library needs to know about the architecture: its default
input size, the intensity normalisation its pretrained weights expect, whether pretrained weights exist and the
name of the layer Grad-CAM should look at. Adding an architecture is one decorated builder function in a model
module. As in timm, the registry imports no model: each model module registers itself when imported, and
:mod:`cxrscreen.models.factory` (``create_model``, ``get_spec``, ``list_models``) imports them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What is known about an architecture without building it."""

    name: str
    builder: Callable[[int, bool], "Backbone"]
    default_img_size: int
    mean: float
    std: float
    has_pretrained: bool
    description: str


class Backbone(nn.Module):
    """A feature extractor: (N, 1, H, W) normalised image -> (N, C, h, w) feature map, with ``out_channels``.

    ``target_layer`` names the module (inside the classifier, see :class:`XrayClassifier`) whose activations
    Grad-CAM uses.
    """

    out_channels: int
    target_layer: str = "backbone"

    def target_slope(self, activations: torch.Tensor) -> torch.Tensor | None:
        """The derivative of what turns the target layer's activations into this backbone's output, at
        ``activations``, when that is elementwise (a ReLU, a ReLU6); None otherwise. With it, Grad-CAM needs no
        backward pass (:mod:`cxrscreen.explain.analytic`), so the ONNX graph can give it."""
        return None


class XrayClassifier(nn.Module):
    """Backbone + pooled linear head, taking the one image convention of cxrscreen.

    Input: float32 tensor (N, 1, H, W) with values in [0, 1] (see :func:`cxrscreen.data.imageio.load_xray`).
    The normalisation the pretrained weights expect happens here, inside the network, so that the torch and
    ONNX paths cannot disagree about it. Output: logits (N, num_classes).
    """

    def __init__(self, backbone: Backbone, num_classes: int, mean: float, std: float, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.out_channels, num_classes)
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    @property
    def target_layer(self) -> str:
        return f"backbone.{self.backbone.target_layer}" if self.backbone.target_layer else "backbone"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, C): pooled backbone output, before dropout and the linear head."""
        fmap = self.backbone((x - self.mean) / self.std)
        return torch.flatten(self.pool(fmap), 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of penultimate features (N, C)."""
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, default_img_size: int, mean: float, std: float, has_pretrained: bool, description: str
) -> Callable:
    """Decorator registering ``builder(num_classes, pretrained) -> Backbone`` under ``name``."""

    def decorate(builder: Callable[[int, bool], Backbone]) -> Callable[[int, bool], Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, default_img_size, mean, std, has_pretrained, description)
        return builder

    return decorate


def registered() -> dict[str, ModelSpec]:
    """The architectures registered so far, by name (:mod:`cxrscreen.models.factory` imports every built-in one)."""
    return dict(_REGISTRY)
