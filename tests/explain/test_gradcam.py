"""Grad-CAM: shape, range, sensitivity to the target class, and pointing at the evidence (not away from it)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrscreen.data.transforms import Preprocessing, prepare_from_source
from cxrscreen.errors import ModelError
from cxrscreen.explain.gradcam import GradCam, normalize_map
from cxrscreen.models.factory import create_model

SIZE = 64
# Class 0's evidence: top-right block; class 1's: bottom-left band. Neither is the other's transpose or flip,
# so a transposed, flipped or inverted map fails the test.
REGIONS = {0: (slice(0, 16), slice(40, 64)), 1: (slice(36, 60), slice(0, 20))}


class RegionModel(nn.Module):
    """Class k's score depends only on the image inside ``REGIONS[k]``: the input is gated per branch, passed
    through bias-free convolutions (so nothing outside a region is active) and summed by the head."""

    target_layer = "features_out"

    def __init__(self) -> None:
        super().__init__()
        masks = torch.zeros(2, SIZE, SIZE)
        for k, (rows, cols) in REGIONS.items():
            masks[k, rows, cols] = 1.0
        self.register_buffer("masks", masks[None])
        generator = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1, groups=2, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.rand(conv.weight.shape, generator=generator))
        self.features_out = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 2, bias=False)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0, :4] = 1.0
            self.head.weight[1, 4:] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features_out(self.conv2(torch.relu(self.conv1(x * self.masks))))
        return self.head(torch.flatten(self.pool(fmap), 1))


@pytest.fixture(scope="module")
def xray(radiography_root: Path) -> torch.Tensor:
    path = sorted((radiography_root / "Normal" / "images").glob("*.jpg"))[0]
    return torch.from_numpy(prepare_from_source(path, Preprocessing(img_size=SIZE)))[None, None]


@pytest.mark.parametrize("target", [0, 1])
def test_heatmap_peaks_in_the_region_the_class_depends_on(xray: torch.Tensor, target: int) -> None:
    heatmaps, logits = GradCam(RegionModel())(xray, target)
    heatmap = heatmaps[0]
    rows, cols = REGIONS[target]
    inside = np.zeros_like(heatmap, dtype=bool)
    inside[rows, cols] = True
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert inside[peak]
    assert heatmap[inside].mean() > 0.3
    # Outside the region (beyond the 2-pixel reach of two 3x3 convolutions) there is no evidence at all.
    grown = np.zeros_like(inside)
    grown[max(rows.start - 2, 0) : rows.stop + 2, max(cols.start - 2, 0) : cols.stop + 2] = True
    assert heatmap[~grown].max() == 0.0
    assert logits.shape == (1, 2)


def test_efficientnet_heatmaps_have_the_input_size_and_follow_the_target(radiography_root: Path) -> None:
    # At 160 px the last feature map is 5 x 5; at 64 px it is 2 x 2 and often holds no positive evidence at all.
    path = sorted((radiography_root / "COVID" / "images").glob("*.jpg"))[0]
    xray = torch.from_numpy(prepare_from_source(path, Preprocessing(img_size=160)))[None, None]
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 3, pretrained=True).eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    cam = GradCam(model)
    assert cam.layer_name == "backbone.net._bn1"
    maps = [cam(xray, k)[0][0] for k in range(3)]
    for heatmap in maps:
        assert heatmap.shape == (160, 160) and heatmap.dtype == np.float32
        assert np.isfinite(heatmap).all() and heatmap.min() >= 0.0 and heatmap.max() <= 1.0
        assert heatmap.max() - heatmap.min() > 0.5
    assert np.abs(maps[0] - maps[1]).mean() > 0.01 and np.abs(maps[1] - maps[2]).mean() > 0.01
    batch, logits = cam(xray.repeat(2, 1, 1, 1), None)
    np.testing.assert_allclose(batch[1], maps[int(logits[1].argmax())], atol=1e-5)
    assert not model.training


def test_wrong_layer_or_class_is_an_error(xray: torch.Tensor) -> None:
    with pytest.raises(ModelError, match="^backbone.nope: "):
        GradCam(RegionModel(), target_layer="backbone.nope")
    with pytest.raises(ModelError, match="class_index"):
        GradCam(RegionModel())(xray, 5)


def test_normalize_map_keeps_orientation() -> None:
    cam = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    np.testing.assert_allclose(normalize_map(cam).numpy(), [[[0.0, 0.25], [0.5, 1.0]]])
    assert normalize_map(torch.full((1, 3, 3), 7.0)).abs().sum() == 0


class InterleavedRegionModel(RegionModel):
    """RegionModel during whose forward pass another thread runs the target layer (as a server predicting in
    another thread would), at the worst moment: after this call's own activations were recorded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features_out(self.conv2(torch.relu(self.conv1(x * self.masks))))
        other = threading.Thread(target=lambda: self.features_out(torch.rand_like(fmap.detach())))
        other.start()
        other.join()
        return self.head(torch.flatten(self.pool(fmap), 1))


def test_other_threads_forward_passes_do_not_leak_into_the_map(xray: torch.Tensor) -> None:
    expected, _ = GradCam(RegionModel())(xray, 0)
    got, _ = GradCam(InterleavedRegionModel())(xray, 0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
