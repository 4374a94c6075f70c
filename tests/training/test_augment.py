"""Batch augmentation: shape and range kept, seeded, and each operation does what it says."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.errors import ConfigError
from cxrscreen.training.augment import AUGMENT_PRESETS, AugmentConfig, BatchAugment, augment_config

S = 64
IDENTITY = AugmentConfig.identity()


def only(**changes) -> BatchAugment:
    """An augmenter doing nothing but ``changes``."""
    return BatchAugment(dataclasses.replace(IDENTITY, **changes), seed=3)


@pytest.fixture(scope="module")
def xrays(small_radiography: Path) -> torch.Tensor:
    """Eight real X-rays as a float batch (8, 1, 64, 64) in [0, 1]."""
    paths = sorted(small_radiography.glob("*/images/*.jpg"))[::4][:8]
    prepared = load_prepared(paths, Preprocessing(img_size=S), progress=False, use_cache=False)
    return torch.from_numpy(prepared.images[:]).float().div(255).unsqueeze(1)


def ramp(n: int = 4) -> torch.Tensor:
    """Horizontal intensity ramp 0 -> 1, (n, 1, S, S)."""
    return torch.linspace(0, 1, S).view(1, 1, 1, S).expand(n, 1, S, S).clone()


def constant(value: float, n: int = 8) -> torch.Tensor:
    return torch.full((n, 1, S, S), value)


@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
def test_shape_dtype_and_range_kept(xrays, preset):
    augment = BatchAugment(augment_config(preset))
    for batch in (xrays, constant(0.0), constant(1.0)):
        out = augment(batch)
        assert out.shape == batch.shape and out.dtype == batch.dtype
        assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_batch_other_seed_other_batch(xrays):
    first = BatchAugment(seed=7)(xrays)
    assert torch.equal(first, BatchAugment(seed=7)(xrays))
    assert not torch.allclose(first, BatchAugment(seed=8)(xrays))
    # A passed generator decides, not the augmenter's own.
    augment = BatchAugment(seed=0)
    assert torch.equal(augment(xrays, torch.Generator().manual_seed(7)), first)
    # Successive batches differ, and images within a batch get different parameters.
    assert not torch.equal(augment(xrays), augment(xrays))
    twins = BatchAugment(seed=1)(xrays[:1].expand(4, 1, S, S).contiguous())
    assert not torch.allclose(twins[0], twins[1])


def test_identity_config_returns_input(xrays):
    assert BatchAugment(IDENTITY)(xrays) is xrays
    assert torch.equal(BatchAugment(augment_config("none"))(xrays), xrays)


def test_default_changes_real_images_but_keeps_them_close(xrays):
    out = BatchAugment(seed=0)(xrays)
    change = (out - xrays).abs().mean(dim=(1, 2, 3))
    assert (change > 0.005).all() and (change < 0.35).all()


def test_horizontal_flip_off_by_default_and_exact_when_on(xrays):
    assert AugmentConfig().hflip_p == 0
    flipped = only(hflip_p=1.0)(xrays)
    torch.testing.assert_close(flipped, xrays.flip(-1), atol=1e-5, rtol=0)


def test_translation_moves_content_by_the_drawn_shift():
    image = torch.zeros(6, 1, S, S)
    image[:, :, 24:40, 24:40] = 1.0
    augment = only(max_translate=0.1)
    params = augment.sample(6, torch.Generator().manual_seed(0))
    out = augment.apply(image, params)
    xs = torch.arange(S, dtype=torch.float32)
    centroid_x = (out.sum(dim=2).squeeze(1) * xs).sum(1) / out.sum(dim=(1, 2, 3))
    centroid_y = (out.sum(dim=3).squeeze(1) * xs).sum(1) / out.sum(dim=(1, 2, 3))
    # Output pixel p samples input p + t (normalised units, 2 = one side): content moves by -t * S / 2.
    shift = params.theta[:, :, 2] * S / 2
    torch.testing.assert_close(centroid_x, 31.5 - shift[:, 0], atol=0.2, rtol=0)
    torch.testing.assert_close(centroid_y, 31.5 - shift[:, 1], atol=0.2, rtol=0)
    assert shift.abs().max() <= 0.1 * S + 1e-4 and shift.abs().max() > 1


def test_rotation_turns_a_line_by_the_drawn_angle():
    image = torch.zeros(4, 1, S, S)
    image[:, :, 31:33, 8:56] = 1.0
    augment = only(max_rotation_deg=20.0)
    params = augment.sample(4, torch.Generator().manual_seed(1))
    out = augment.apply(image, params)[:, 0]
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    for img, theta in zip(out, params.theta):
        w = img / img.sum()
        mx, my = (w * xs).sum(), (w * ys).sum()
        cxx, cyy, cxy = (w * (xs - mx) ** 2).sum(), (w * (ys - my) ** 2).sum(), (w * (xs - mx) * (ys - my)).sum()
        measured = 0.5 * math.atan2(2 * cxy, cxx - cyy)
        drawn = math.atan2(theta[1, 0], theta[0, 0])
        assert abs(abs(measured) - abs(drawn)) < math.radians(1.5)
        assert abs(drawn) <= math.radians(20)


def test_random_resized_crop_zooms_in():
    augment = only(crop_area=(0.25, 0.25))
    out = augment(ramp())
    # A crop of half the side stretched to the full side: features get twice as large, the ramp half as steep,
    # and the output spans half the input's range.
    slope = (out[:, 0, 32, 40] - out[:, 0, 32, 24]) / 16
    torch.testing.assert_close(slope, torch.full((4,), 0.5 / (S - 1)), atol=5e-4, rtol=0)
    span = out[:, 0, 32, -2] - out[:, 0, 32, 1]
    torch.testing.assert_close(span, torch.full((4,), 0.5 * (S - 3) / (S - 1)), atol=0.02, rtol=0)


def test_gamma_raises_to_a_drawn_power_within_range():
    augment = only(max_gamma=1.5)
    params = augment.sample(8, torch.Generator().manual_seed(2))
    out = augment.apply(constant(0.5), params)
    torch.testing.assert_close(out[:, 0, 0, 0], 0.5 ** params.gamma)
    assert (params.gamma >= 1 / 1.5 - 1e-6).all() and (params.gamma <= 1.5 + 1e-6).all()
    assert params.gamma.std() > 0.05


def test_contrast_scales_spread_and_brightness_shifts_mean():
    image = ramp(8) * 0.5 + 0.25
    contrasted = only(contrast=0.3)(image)
    ratio = contrasted.std(dim=(1, 2, 3)) / image.std(dim=(1, 2, 3))
    assert ((ratio >= 0.7 - 1e-4) & (ratio <= 1.3 + 1e-4)).all() and ratio.std() > 0.02
    torch.testing.assert_close(contrasted.mean(dim=(1, 2, 3)), image.mean(dim=(1, 2, 3)))
    brightened = only(brightness=0.1)(constant(0.5))
    offsets = brightened[:, 0, 0, 0] - 0.5
    assert (offsets.abs() <= 0.1 + 1e-6).all() and offsets.std() > 0.01
    assert torch.equal(brightened, brightened[:, :, :1, :1].expand_as(brightened))


def test_blur_smooths_detail_and_keeps_flat_areas():
    checker = ((torch.arange(S).view(-1, 1) + torch.arange(S).view(1, -1)) % 2).float().expand(4, 1, S, S)
    blurred = only(blur_p=1.0, blur_sigma=(1.0, 1.5))(checker)
    assert (blurred.std(dim=(1, 2, 3)) < 0.2 * checker.std(dim=(1, 2, 3))).all()
    torch.testing.assert_close(blurred.mean(dim=(1, 2, 3)), checker.mean(dim=(1, 2, 3)), atol=0.01, rtol=0)
    torch.testing.assert_close(only(blur_p=1.0)(constant(0.4)), constant(0.4))
    assert torch.equal(only(blur_p=0.0, noise_p=0.0)(checker), checker)


def test_noise_has_the_drawn_strength():
    augment = only(noise_p=1.0, max_noise_std=0.05)
    params = augment.sample(8, torch.Generator().manual_seed(4))
    out = augment.apply(constant(0.5), params, torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), params.noise_std, atol=0.004, rtol=0.05)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.full((8,), 0.5), atol=0.005, rtol=0)


def test_erasing_fills_a_border_band_or_corner_only():
    augment = only(erase_p=1.0, erase_size=(0.1, 0.2))
    image = constant(0.5, n=32) + torch.rand(32, 1, S, S, generator=torch.Generator().manual_seed(0)) * 0.01
    params = augment.sample(32, torch.Generator().manual_seed(6))
    out = augment.apply(image, params)
    changed = (out != image)[:, 0]
    centre = slice(int(0.2 * S) + 1, S - int(0.2 * S) - 1)
    assert not changed[:, centre, centre].any()
    for mask, kind, size, fill, img in zip(changed, params.erase_kind, params.erase_size, params.erase_fill, out[:, 0]):
        depth = float(size) * S
        band, corner = depth * S, depth * depth
        assert abs(mask.sum().item() - (corner if kind >= 4 else band)) <= 2 * S
        torch.testing.assert_close(img[mask], fill.expand(int(mask.sum())))
        touches = {"top": mask[0].any(), "bottom": mask[-1].any(), "left": mask[:, 0].any(), "right": mask[:, -1].any()}
        assert sum(bool(v) for v in touches.values()) == (2 if kind >= 4 else 3)
    assert set(params.erase_kind.tolist()) == set(range(8))


def test_bad_configs_are_rejected():
    with pytest.raises(ConfigError, match="--augment"):
        augment_config("wild")
    with pytest.raises(ConfigError, match="crop_area"):
        AugmentConfig(crop_area=(0.5, 1.5))
    with pytest.raises(ConfigError, match="hflip_p"):
        AugmentConfig(hflip_p=2.0)
    with pytest.raises(ValueError, match="N, 1, S, S"):
        BatchAugment()(torch.zeros(2, 3, S, S))


def test_real_batch_after_augment_is_not_all_black(xrays):
    out = BatchAugment(augment_config("strong"), seed=0)(xrays).numpy()
    assert np.all(out.reshape(len(out), -1).mean(axis=1) > 0.1)
