"""Training the lung segmenter (``cxrscreen segment train``) on image/mask pairs (:mod:`cxrscreen.lungs.pairs`),
validated by the network's own Dice (:func:`mean_dice`, in torch) and tested on masks at full size
(:mod:`cxrscreen.lungs.metrics`). Inference lives in :mod:`cxrscreen.lungs.segmenter`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from cxrscreen.errors import ConfigError
from cxrscreen.io_utils import atomic_write
from cxrscreen.lungs.defaults import TEST_DATA, TRAIN_DATA
from cxrscreen.lungs.metrics import evaluate_segmenter
from cxrscreen.lungs.pairs import load_pairs, segmentation_pairs
from cxrscreen.lungs.network import LungUNet, torch_predictor
from cxrscreen.lungs.segmenter import LungSegmenter
from cxrscreen.lungs.weights import DEFAULT_WEIGHTS, FILE_FORMAT, IMG_SIZES, SegmenterArch

@dataclass
class SegmenterTrainConfig:
    """``cxrscreen segment train``: data, input size, schedule. ``test_data`` is only evaluated, at the end."""

    data: str = str(TRAIN_DATA)
    test_data: str | None = str(TEST_DATA)
    out: str = str(DEFAULT_WEIGHTS)
    img_size: int = 128
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.08
    threads: int = 2
    seed: int = 0
    arch: SegmenterArch = field(default_factory=SegmenterArch)

    def __post_init__(self) -> None:
        if self.img_size not in IMG_SIZES:
            raise ConfigError(f"--img-size must be one of {', '.join(map(str, IMG_SIZES))}, got {self.img_size}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        self.arch = dataclasses.replace(self.arch, img_size=self.img_size)


def augment_pairs(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Same random geometry for images and masks (N, 1, S, S): rotation +-10 deg, scale 0.85-1.15, shift +-6%;
    then gamma 0.7-1.4 and contrast/brightness on the images only. No flips: the heart makes the lungs asymmetric.
    """
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.85, 1.15)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, uniform(-0.06, 0.06)], 1), torch.stack([sin, cos, uniform(-0.06, 0.06)], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).float()
    gamma = torch.exp(uniform(math.log(0.7), math.log(1.4))).view(n, 1, 1, 1)
    contrast = uniform(0.8, 1.2).view(n, 1, 1, 1)
    brightness = uniform(-0.08, 0.08).view(n, 1, 1, 1)
    images = (images.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + brightness
    return images.clamp(0, 1), masks


def save_segmenter(path: str | os.PathLike, net: LungUNet, info: dict[str, Any]) -> None:
    """Write weights (fp16: half the size, Dice unchanged) and ``info`` atomically."""
    payload = {
        "format": FILE_FORMAT,
        "info": info,
        "state_dict": {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu() for k, v in net.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())


def train_segmenter(cfg: SegmenterTrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the U-Net with Dice + BCE and AdamW (one-cycle schedule), keep the epoch best on a held-out part of
    the training collection, evaluate on ``cfg.test_data`` and save the self-describing file to ``cfg.out``.
    Returns the file's ``info``."""
    from monai.losses import DiceCELoss

    started = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    pairs = segmentation_pairs(cfg.data)
    order = np.random.default_rng(cfg.seed).permutation(len(pairs))
    n_val = max(1, int(round(cfg.val_fraction * len(pairs))))
    val_pairs = [pairs[i] for i in sorted(order[:n_val])]
    train_pairs = [pairs[i] for i in sorted(order[n_val:])]
    train_x, train_y = load_pairs(train_pairs, cfg.img_size)
    val_x, val_y = load_pairs(val_pairs, cfg.img_size)
    log(f"loaded {len(train_pairs)} training and {len(val_pairs)} validation pairs in {time.time() - started:.0f}s")

    net = LungUNet(cfg.arch)
    loss_fn = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_pairs) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    images_t, masks_t = torch.from_numpy(train_x[:, None]), torch.from_numpy(train_y[:, None])
    best_dice, best_state, best_epoch, history = -1.0, None, 0, []
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        total = 0.0
        for batch in torch.randperm(len(train_pairs), generator=gen).split(cfg.batch_size):
            x, y = augment_pairs(images_t[batch], masks_t[batch], gen)
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        val_dice = mean_dice(net, val_x, val_y)
        history.append({"epoch": epoch, "loss": total / len(train_pairs), "val_dice": val_dice})
        log(f"epoch {epoch}/{cfg.epochs} loss {total / len(train_pairs):.4f} val dice {val_dice:.4f} "
            f"({time.time() - started:.0f}s)")
        if val_dice > best_dice:
            best_dice, best_epoch = val_dice, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()
    info: dict[str, Any] = {
        "arch": dataclasses.asdict(cfg.arch),
        "train_summary": {
            "data": str(cfg.data),
            "train_images": len(train_pairs),
            "val_images": len(val_pairs),
            "epochs": cfg.epochs,
            "best_epoch": best_epoch,
            "val_dice_at_input_size": best_dice,
            "train_seconds": round(time.time() - started, 1),
            "threads": cfg.threads,
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "arch"},
            "history": history,
        },
        "test": {},
    }
    if cfg.test_data:
        segmenter = LungSegmenter(torch_predictor(net), info, "torch")
        info["test"] = {"data": str(cfg.test_data), **evaluate_segmenter(segmenter, segmentation_pairs(cfg.test_data))}
        log(f"test Dice on {cfg.test_data}: mean {info['test']['dice_mean']:.4f}, min {info['test']['dice_min']:.4f}")
    save_segmenter(cfg.out, net, info)
    log(f"saved {cfg.out}")
    return info


def mean_dice(net: LungUNet, images: np.ndarray, masks: np.ndarray) -> float:
    """Mean Dice at the network's size of thresholded outputs for (N, S, S) images and masks."""
    with torch.inference_mode():
        pred = net.eval()(torch.from_numpy(images[:, None])) > 0
    truth = torch.from_numpy(masks[:, None]) > 0.5
    inter = (pred & truth).sum(dim=(1, 2, 3)).float()
    total = (pred.sum(dim=(1, 2, 3)) + truth.sum(dim=(1, 2, 3))).float()
    return float((2 * inter / total.clamp(min=1)).mean())
