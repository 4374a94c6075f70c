"""How well lung masks agree: Dice and IoU, of the segmenter against published masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrscreen.data.imageio import load_xray
from cxrscreen.lungs.pairs import read_lung_mask
from cxrscreen.lungs.segmenter import LungSegmenter


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks of the same shape (1.0 when both are empty)."""
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    union = total - inter
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)


def evaluate_segmenter(segmenter: LungSegmenter, pairs: Sequence[tuple[Path, Path]]) -> dict[str, Any]:
    """Dice/IoU at each image's own size: mean, median, min, and the share of masks judged plausible."""
    images = [load_xray(image) for image, _ in pairs]
    truths = [read_lung_mask(mask) for _, mask in pairs]
    results = segmenter.segment_batch(images)
    scores = np.array([dice_iou(r.mask, t) for r, t in zip(results, truths)])
    return {
        "images": len(pairs),
        "dice_mean": float(scores[:, 0].mean()),
        "dice_median": float(np.median(scores[:, 0])),
        "dice_min": float(scores[:, 0].min()),
        "iou_mean": float(scores[:, 1].mean()),
        "iou_median": float(np.median(scores[:, 1])),
        "iou_min": float(scores[:, 1].min()),
        "plausible_fraction": float(np.mean([r.plausible for r in results])),
    }

