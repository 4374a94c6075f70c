"""Grad-CAM from the forward pass (explain.analytic) against Grad-CAM by autograd (explain.gradcam)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrscreen.explain.analytic import ScoresAndMaps, explains_analytically
from cxrscreen.explain.gradcam import GradCam, normalize_map
from cxrscreen.models.factory import create_model, list_models
from cxrscreen.models.registry import Backbone, XrayClassifier


def normalised(maps: torch.Tensor) -> np.ndarray:
    return normalize_map(maps).numpy()


@pytest.mark.parametrize("arch", [spec.name for spec in list_models()])
def test_every_architecture_gets_autograds_maps_for_every_class(arch: str) -> None:
    """The slope each backbone states is the one autograd finds: same logits, same map for every class (trained
    BatchNorm statistics moved off their defaults, so that activations fall on both sides of ReLU6's kinks)."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, pretrained=False)
    assert explains_analytically(model)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 2.0)
            module.weight.data.uniform_(0.5, 4.0)
            module.bias.data.uniform_(-2.0, 3.0)
    model.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        logits, features, maps = ScoresAndMaps(model)(x)
    assert maps.shape == (2, 3, 64, 64)
    for target in range(3):
        expected, autograd_logits = GradCam(model)(x, target)
        np.testing.assert_allclose(logits.numpy(), autograd_logits, atol=1e-5)
        np.testing.assert_allclose(normalised(maps[:, target]), expected, atol=1e-4)
    np.testing.assert_allclose(features.numpy(), model.features(x).detach().numpy(), atol=1e-5)


class PlainBackbone(Backbone):
    """A backbone whose output is not an elementwise function of its target layer's: it states no slope."""

    target_layer = "conv"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=4)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.out_channels = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(self.conv(x)))


def test_a_backbone_without_a_slope_is_explained_by_autograd() -> None:
    from cxrscreen.inference.backends import TorchBackend

    model = XrayClassifier(PlainBackbone(), num_classes=2, mean=0.5, std=0.25).eval()
    assert not explains_analytically(model) and not TorchBackend(model).explains
    with pytest.raises(TypeError, match="GradCam"):
        ScoresAndMaps(model)
