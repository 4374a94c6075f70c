"""The lung segmenter: the shipped model on JSRT (a source it never trained on), post-processing, plausibility,
ONNX Runtime vs torch, the weight file, and ``cxrscreen segment``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrscreen.cli import main
from cxrscreen.data.imageio import load_xray
from cxrscreen.errors import ModelError
from cxrscreen.lungs.segmenter import (
    DEFAULT_WEIGHTS,
    PlausibilityLimits,
    check_plausibility,
    clean_mask,
    load_segmenter,
    segment_lungs,
)
from cxrscreen.lungs.metrics import dice_iou, evaluate_segmenter
from cxrscreen.lungs.network import read_segmenter_file
from cxrscreen.lungs.pairs import read_lung_mask, segmentation_pairs


@pytest.fixture(scope="module")
def jsrt_pairs(shared_data: Path) -> list[tuple[Path, Path]]:
    """Ten JSRT pairs spread over the collection (with and without nodules)."""
    return segmentation_pairs(shared_data / "lung_segmentation" / "jsrt")[::25]


def test_shipped_model_segments_jsrt_well(jsrt_pairs):
    scores = evaluate_segmenter(load_segmenter(), jsrt_pairs)
    assert scores["images"] == 10
    assert scores["dice_mean"] >= 0.93 and scores["dice_min"] >= 0.85
    assert scores["plausible_fraction"] == 1.0


def test_shipped_file_is_self_describing_and_small():
    assert DEFAULT_WEIGHTS.stat().st_size < 5_000_000
    info = read_segmenter_file(DEFAULT_WEIGHTS)["info"]
    assert info["arch"]["img_size"] in (128, 160, 192, 256)
    assert info["test"]["images"] == 247 and info["test"]["dice_mean"] > 0.9
    assert info["train_summary"]["train_images"] > 600


def test_mask_has_the_image_size_and_batch_matches_single(jsrt_pairs):
    images = [load_xray(p) for p, _ in jsrt_pairs[:3]]
    images[1] = images[1][:200, :180]  # sizes may differ within a batch
    batch = load_segmenter().segment_batch(images)
    for image, result in zip(images, batch):
        single = segment_lungs(image)
        assert result.mask.shape == image.shape and result.mask.dtype == bool
        np.testing.assert_array_equal(result.mask, single.mask)
        assert result.area_fraction == pytest.approx(result.mask.mean())


def test_jsrt_mask_values_exclude_the_heart(jsrt_pairs):
    raw = np.asarray(Image.open(jsrt_pairs[0][1]))
    lungs = read_lung_mask(jsrt_pairs[0][1])
    assert lungs.sum() == np.isin(raw, (150, 200)).sum() and not lungs[raw == 250].any()


def test_clean_mask_keeps_the_two_largest_components_and_fills_holes():
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:45, 5:25] = True  # left lung, with a hole
    mask[20:24, 12:16] = False
    mask[5:40, 35:55] = True  # right lung
    mask[50:55, 50:55] = True  # third, small: dropped
    cleaned = clean_mask(mask)
    expected = np.zeros_like(mask)
    expected[5:45, 5:25] = True
    expected[5:40, 35:55] = True
    np.testing.assert_array_equal(cleaned, expected)


def test_clean_mask_drops_specks_next_to_one_big_component():
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:50, 5:55] = True
    mask[55, 55] = True
    assert clean_mask(mask).sum() == 45 * 50
    assert not clean_mask(np.zeros((5, 5), dtype=bool)).any()


@pytest.mark.parametrize(
    ("box", "uncertain", "reason"),
    [
        (None, 0.0, "no lungs found"),
        ((slice(0, 60), slice(0, 60)), 0.0, "too large"),
        ((slice(10, 50), slice(5, 25)), 0.0, "one side only"),
        ((slice(10, 50), slice(5, 55)), 0.9, "unsure"),
    ],
)
def test_plausibility_reasons(box, uncertain, reason):
    mask = np.zeros((60, 60), dtype=bool)
    if box:
        mask[box] = True
    assert reason in check_plausibility(mask, uncertain, PlausibilityLimits())


def test_the_area_in_a_reason_is_rounded_as_segment_prints_it():
    """``segment`` prints ``lung area 0.3%``; the reason must not then say 0% (one rounding, with the limit)."""
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:45, 40:46] = True  # 30 pixels: 0.3%
    assert check_plausibility(mask, 0.0, PlausibilityLimits()) == "lung area 0.3% of the image is too small (under 6.0%)"
    mask[:, :] = True
    assert check_plausibility(mask, 0.0, PlausibilityLimits()) == "lung area 100.0% of the image is too large (over 60.0%)"


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_blank_or_noise_image_is_not_plausible(kind):
    image = np.full((200, 200), 0.5, np.float32) if kind == "blank" else np.random.default_rng(0).random((200, 200))
    result = segment_lungs(image.astype(np.float32))
    assert not result.plausible and result.reason


def test_onnx_runtime_masks_match_torch(jsrt_pairs, shared_data):
    images = [load_xray(p) for p, _ in jsrt_pairs[:4]]
    images.append(load_xray(next((shared_data / "COVID-19_Radiography_Dataset" / "COVID" / "images").glob("*.jpg"))))
    torch_seg, onnx_seg = load_segmenter(), load_segmenter(backend="onnx")
    np.testing.assert_allclose(onnx_seg.probabilities(images), torch_seg.probabilities(images), atol=1e-4)
    for a, b in zip(torch_seg.segment_batch(images), onnx_seg.segment_batch(images)):
        assert dice_iou(a.mask, b.mask)[0] > 0.999 and a.plausible == b.plausible


def test_exported_onnx_file_loads(tmp_path, jsrt_pairs):
    from cxrscreen.lungs.network import export_segmenter_onnx

    path = export_segmenter_onnx(tmp_path / "lungs.onnx")
    image = load_xray(jsrt_pairs[0][0])
    from_file = load_segmenter(path, backend="onnx").segment(image)
    assert dice_iou(from_file.mask, segment_lungs(image).mask)[0] > 0.999


def test_missing_or_foreign_weight_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_segmenter(tmp_path / "none.pt")
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=str(foreign)):
        load_segmenter(foreign)


def test_cli_segment_writes_masks_and_reports_bad_files(tmp_path, jsrt_pairs, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    code = main(["segment", str(jsrt_pairs[0][0]), str(bad), str(tmp_path / "missing.jpg"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith(str(bad)) and errors[1].startswith(str(tmp_path / "missing.jpg"))
    stem = jsrt_pairs[0][0].stem
    mask = np.asarray(Image.open(out / f"{stem}_lungs.png"))
    overlay = np.asarray(Image.open(out / f"{stem}_lungs_overlay.png"))
    assert mask.shape == (224, 224) and set(np.unique(mask)) == {0, 255}
    assert overlay.shape == (224, 224, 3)
    assert dice_iou(mask == 255, read_lung_mask(jsrt_pairs[0][1]))[0] > 0.85
    assert stem in captured.out and "lungs found" in captured.out


@pytest.mark.slow
def test_cli_segment_train_writes_a_loadable_file(tmp_path, shared_data):
    root = tmp_path / "pairs"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    source = shared_data / "lung_segmentation" / "montgomery_shenzhen"
    for image, mask in segmentation_pairs(source)[::100]:
        (root / "images" / image.name).symlink_to(image)
        (root / "masks" / mask.name).symlink_to(mask)
    out = tmp_path / "tiny.pt"
    code = main(["segment", "train", "--data", str(root), "--test-data", str(root), "--epochs", "1",
                 "--threads", "1", "--out", str(out)])
    assert code == 0
    info = read_segmenter_file(out)["info"]
    assert info["train_summary"]["epochs"] == 1 and info["test"]["images"] == 8
    assert load_segmenter(out).segment(np.full((64, 64), 0.5, np.float32)).mask.shape == (64, 64)
