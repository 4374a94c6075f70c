"""Style augmentation: histogram matching across sources, tone curves and MixStyle do what they say, seeded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.errors import ConfigError
from cxrscreen.models.factory import create_model
from cxrscreen.training.style import (
    StyleAugment,
    StyleConfig,
    early_blocks,
    insert_mixstyle,
    match_histograms,
    tone_curve,
)

S = 32


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def augment(kinds: str, images: torch.Tensor, sources: list[int], seed: int = 0, p: float = 1.0) -> torch.Tensor:
    cfg = StyleConfig(kinds=tuple(kinds.split(",")), p=p)
    return StyleAugment(cfg)(images, torch.tensor(sources), seeded(seed))


def distinct_images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, S, S) images of differently shaped histograms, every pixel value distinct and non-zero."""
    gen = seeded(seed)
    images = []
    for i in range(n):
        levels = torch.linspace(0.01, 1.0, S * S) ** (0.5 + i)  # image i: a different histogram
        images.append(levels[torch.randperm(S * S, generator=gen)].view(1, S, S))
    return torch.stack(images)


@pytest.fixture(scope="module")
def xrays(small_radiography: Path) -> torch.Tensor:
    """Eight real X-rays as a float batch (8, 1, 64, 64) in [0, 1]."""
    paths = sorted(small_radiography.glob("*/images/*.jpg"))[::4][:8]
    prepared = load_prepared(paths, Preprocessing(img_size=64), progress=False, use_cache=False)
    return torch.from_numpy(prepared.images[:]).float().div(255).unsqueeze(1)


def test_config_round_trips_in_canonical_order():
    cfg = StyleConfig.parse(" tone, mixstyle,histmatch,tone ")
    assert cfg.kinds == ("histmatch", "tone", "mixstyle")
    assert cfg.pixel_kinds == ("histmatch", "tone") and cfg.has_mixstyle
    changed = StyleConfig(kinds=("tone",), p=0.3, mixstyle_p=0.7, mixstyle_alpha=0.2)
    for config in (cfg, changed, StyleConfig()):
        assert StyleConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert StyleConfig.parse("none") == StyleConfig.parse("") == StyleConfig()
    assert not StyleConfig().has_mixstyle and StyleConfig().pixel_kinds == ()


def test_unknown_kind_and_bad_strengths_are_config_errors():
    with pytest.raises(ConfigError, match="'histmach'"):
        StyleConfig.parse("tone,histmach")
    with pytest.raises(ConfigError, match="mixstyle_p"):
        StyleConfig(mixstyle_p=1.5)
    with pytest.raises(ConfigError, match=r"\bp="):
        StyleConfig(p=-0.1)
    with pytest.raises(ConfigError, match="mixstyle_alpha"):
        StyleConfig(mixstyle_alpha=0.0)
    with pytest.raises(ConfigError, match="'blur'"):
        StyleConfig.from_dict({"kinds": ["blur"]})


def test_same_seed_same_batch_other_seed_other_batch():
    images, sources = distinct_images(8), [0, 1, 2, 0, 1, 2, 0, 1]
    first = augment("histmatch,tone", images, sources, seed=5, p=0.5)
    assert torch.equal(first, augment("histmatch,tone", images, sources, seed=5, p=0.5))
    assert not torch.allclose(first, augment("histmatch,tone", images, sources, seed=6, p=0.5))
    for kind in ("histmatch", "tone"):
        assert not torch.equal(augment(kind, images, sources, seed=1), augment(kind, images, sources, seed=2))


def test_histmatch_gives_the_reference_quantiles_and_keeps_pixel_order():
    images = distinct_images(2)
    out = augment("histmatch", images, [3, 7])
    for i, reference in ((0, 1), (1, 0)):
        torch.testing.assert_close(out[i].flatten().sort().values, images[reference].flatten().sort().values)
        # A monotone map: the pixels keep their order.
        assert torch.equal(out[i].flatten().argsort(), images[i].flatten().argsort())


def test_histmatch_borrows_only_from_another_source():
    images = distinct_images(4)
    for seed in range(6):
        out = augment("histmatch", images, [0, 0, 0, 1], seed=seed)
        # Images 0-2 (source 0) can only take image 3's histogram; image 3 takes one of the others'.
        for i in range(3):
            torch.testing.assert_close(out[i].flatten().sort().values, images[3].flatten().sort().values)
        assert any(torch.allclose(out[3].flatten().sort().values, images[j].flatten().sort().values) for j in range(3))
    assert torch.equal(augment("histmatch", images, [4, 4, 4, 4]), images)


def test_zeros_stay_zero_out_of_the_histogram_and_a_flat_fill_stays_flat():
    images = distinct_images(2)
    images[0, :, : S // 3] = 0.0  # black band (padding, or a blacked-out background): a third of image 0
    images[0, :, -4:, -8:] = 0.37  # a flat fill, as lung masking's mean
    background = images[0] == 0
    for kinds in ("histmatch", "tone", "histmatch,tone"):
        out = augment(kinds, images, [0, 1])
        assert (out[0][background] == 0).all() and (out[0][~background] > 0).all()
        assert out[0, :, -4:, -8:].unique().numel() == 1
    # The non-black pixels of image 0 take the quantiles of image 1 (had the zeros counted, they would take only
    # its upper two thirds).
    matched = augment("histmatch", images, [0, 1])[0][~background]
    levels = torch.linspace(0.05, 0.95, 10)
    torch.testing.assert_close(matched.quantile(levels), images[1].flatten().quantile(levels), atol=0.03, rtol=0)


def test_real_xrays_keep_shape_dtype_range_and_change(xrays):
    sources = [0, 1] * 4
    for kinds in ("histmatch", "tone", "histmatch,tone"):
        out = augment(kinds, xrays, sources)
        assert out.shape == xrays.shape and out.dtype == xrays.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert ((out - xrays).abs().mean(dim=(1, 2, 3)) > 0.005).all()
    for value in (0.0, 1.0):
        flat = torch.full((4, 1, S, S), value)
        out = augment("histmatch,tone", flat, [0, 1, 0, 1])
        assert torch.equal(out, flat)
    assert StyleAugment(StyleConfig(kinds=("mixstyle",)))(xrays, torch.tensor(sources), seeded(0)) is xrays


def test_tone_curves_are_monotone_fix_both_ends_and_vary():
    n = 64
    ramp = torch.linspace(0, 1, 257).view(1, 1, 1, -1).expand(n, 1, 1, -1).contiguous()
    out = augment("tone", ramp, [0] * n)
    steps = out.diff(dim=-1)
    assert (steps >= 0).all()
    assert (out[..., 0] == 0).all()
    assert (out[..., -1] == 1).all()
    # Curves below and above the identity, i.e. darker and brighter mid-tones, and more and less mid contrast.
    middle = out[..., 128].flatten()
    assert (middle < 0.4).any() and (middle > 0.6).any()
    gen = seeded(0)
    params = torch.rand(3, n, generator=gen)
    for lower in (True, False):
        curve = tone_curve(ramp, torch.ones(n), 1 + 7 * params[0], 0.3 + 0.4 * params[1], torch.full((n,), lower))
        assert (curve.diff(dim=-1) >= 0).all()
        mid_slope = (curve[..., 136] - curve[..., 120]) / (16 / 256)
        assert (mid_slope < 1).all() if lower else (mid_slope > 1).any()


def test_match_histograms_leaves_unselected_images_alone():
    images = distinct_images(3)
    out = match_histograms(images, torch.tensor([1, 2, 0]), torch.tensor([True, False, True]))
    assert torch.equal(out[1], images[1]) and not torch.allclose(out[0], images[0])


class StridedNet(nn.Module):
    """Five stride-2 convolutions (1/2 ... 1/32): the early blocks are those at 1/4, 1/8 and 1/16."""

    def __init__(self) -> None:
        super().__init__()
        widths = [1, 4, 6, 8, 8, 8]
        self.blocks = nn.Sequential(*[nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def test_early_blocks_are_found_by_stride_and_modes_are_restored():
    net = StridedNet().train()
    assert early_blocks(net) == [net.blocks[1], net.blocks[2], net.blocks[3]]
    model = create_model("efficientnet_lite0", 3, pretrained=False).train()
    blocks = list(model.backbone.net._blocks)
    assert [blocks.index(b) for b in early_blocks(model.backbone)] == [2, 4, 10]
    assert all(module.training for module in model.modules())
    with pytest.raises(ConfigError, match="no sequence of blocks"):
        early_blocks(nn.Conv2d(1, 1, 3))


def test_mixstyle_only_in_training_and_removable_on_efficientnet_lite0():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 3, pretrained=False)
    x = torch.rand(2, 1, 64, 64)
    state = {name: value.clone() for name, value in model.state_dict().items()}

    def features(train: bool) -> torch.Tensor:
        model.load_state_dict(state)  # a training forward moves batch norm's running statistics
        model.train(train)
        torch.manual_seed(1)  # drop-connect draws from the global generator
        with torch.no_grad():
            return model.features(x)

    plain_train, plain_eval = features(True), features(False)
    handle = insert_mixstyle(model.backbone, StyleConfig(kinds=("mixstyle",), mixstyle_p=1.0), seeded(0))
    handle.set_domains(torch.tensor([0, 1]))
    assert handle.plan.active
    assert not torch.allclose(features(True), plain_train, atol=1e-4)
    assert torch.equal(features(False), plain_eval)
    handle.remove()
    assert not any(module._forward_hooks for module in model.modules())
    handle.set_domains(torch.tensor([0, 1]))
    assert handle.plan is None and torch.equal(features(True), plain_train)
    assert insert_mixstyle(model.backbone, StyleConfig(kinds=("tone",))).blocks == []


def capture(module: nn.Module, store: list) -> None:
    module.register_forward_hook(lambda _m, _i, output: store.append(output.detach().clone()))


def test_mixstyle_mixes_each_sample_with_another_source_statistics():
    torch.manual_seed(0)
    net = StridedNet().train()
    block = net.blocks[1]
    before, after = [], []
    capture(block, before)  # registered first: sees the block's own output
    handle = insert_mixstyle(net, StyleConfig(kinds=("mixstyle",), mixstyle_p=1.0, mixstyle_alpha=1.0), seeded(3))
    capture(block, after)  # registered last: sees MixStyle's output
    sources = torch.tensor([0, 0, 1, 1, 2])
    x = torch.rand(5, 1, 64, 64) * torch.linspace(0.2, 2, 5).view(-1, 1, 1, 1)
    for _ in range(5):
        handle.set_domains(sources)
        plan = handle.plan
        assert (sources[plan.partner] != sources).all() and plan.active
        before.clear(), after.clear()
        net(x)
        own, mixed = before[0], after[0]
        weight = plan.weights[0].view(-1, 1)
        mean, std = own.mean(dim=(2, 3)), own.std(dim=(2, 3), unbiased=False)
        expected_mean = weight * mean + (1 - weight) * mean[plan.partner]
        expected_std = weight * std + (1 - weight) * std[plan.partner]
        torch.testing.assert_close(mixed.mean(dim=(2, 3)), expected_mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mixed.std(dim=(2, 3), unbiased=False), expected_std, atol=1e-4, rtol=1e-3)
    handle.set_domains(torch.zeros(5, dtype=torch.long))  # one source: nothing to mix with
    before.clear(), after.clear()
    net(x)
    assert not handle.plan.active and torch.equal(after[0], before[0])


def test_mixstyle_probability_and_seed():
    net = StridedNet()
    sources = torch.arange(4)
    never = insert_mixstyle(net, StyleConfig(kinds=("mixstyle",), mixstyle_p=0.0))
    never.set_domains(sources)
    assert not never.plan.active
    never.remove()
    plans = []
    for seed in (0, 0, 1):
        handle = insert_mixstyle(net, StyleConfig(kinds=("mixstyle",)), seeded(seed))
        handle.set_domains(sources)
        plans.append(handle.plan)
        handle.remove()
    assert torch.equal(plans[0].weights, plans[1].weights) and torch.equal(plans[0].partner, plans[1].partner)
    assert not torch.equal(plans[0].weights, plans[2].weights)
    assert plans[0].weights.shape == (3, 4)
