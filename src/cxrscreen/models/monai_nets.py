"""Architectures from MONAI (random initialisation: MONAI ships no ImageNet weights)."""

from __future__ import annotations

import torch

from cxrscreen.models.registry import Backbone, register_model


class MonaiDenseNetBackbone(Backbone):
    """MONAI DenseNet-121 features on one-channel input: (N, 1, H, W) -> (N, 1024, H/32, W/32)."""

    target_layer = "net.features.norm5"

    def __init__(self) -> None:
        from monai.networks.nets import DenseNet121  # here: importing MONAI takes seconds; other models skip it

        super().__init__()
        self.net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
        self.out_channels = self.net.class_layers.out.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.net.features(x))

    def target_slope(self, activations: torch.Tensor) -> torch.Tensor:
        """The output is ReLU(norm5(...)): slope 1 where the activation is positive (as its backward)."""
        return (activations > 0).to(activations.dtype)


register_model(
    "monai_densenet121",
    default_img_size=224,
    mean=0.5,
    std=0.25,
    has_pretrained=False,
    description="MONAI DenseNet-121, random initialisation (no pretrained weights ship offline)",
)(lambda num_classes, pretrained: MonaiDenseNetBackbone())
