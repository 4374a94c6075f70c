"""The pieces of one optimisation step and of a validation pass: class weights, the learning-rate schedule, a
rank's share of the shuffle, the uint8 -> float input on the device, logits and the scores that pick the best
epoch. Site adaptation (:mod:`cxrscreen.adaptation`) fine-tunes with the same pieces."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from cxrscreen.data.stack import ImageStack
from cxrscreen.data.imageio import to_float
from cxrscreen.metrics.classification import point_metrics
from cxrscreen.models.registry import XrayClassifier


def class_weights(targets: np.ndarray, num_classes: int, draws: np.ndarray | None = None) -> torch.Tensor:
    """Inverse-frequency weights (mean 1) so that a rare class counts as much as a common one. ``draws``: how often
    an epoch draws each image (a balanced sampler's, see :meth:`BalancedSampler.draws_per_image`; default once)."""
    counts = np.bincount(targets, weights=draws, minlength=num_classes).astype(np.float64)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 1% of the base rate."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def to_input(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, S, S) -> float (N, 1, S, S) in [0, 1], channels-last, on ``device``."""
    x = to_float(images_uint8.to(device, non_blocking=True).unsqueeze(1))
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits(model: XrayClassifier, images: np.ndarray | ImageStack, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Logits (N, C) of uint8 images (N, S, S), an array or a stack on disk read a batch at a time, in eval mode."""
    model.eval()
    logits = [model(to_input(torch.from_numpy(images[start : start + batch_size]), device)).float().cpu().numpy()
              for start in range(0, len(images), batch_size)]
    return np.concatenate(logits) if logits else np.zeros((0, model.head.out_features), np.float32)


def validation_scores(logits: np.ndarray, targets: np.ndarray, num_classes: int) -> dict[str, float]:
    """Point estimates used to pick the best epoch (no bootstrap: that is for the final report)."""
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return point_metrics(targets, probs, num_classes)


def rank_indices(n_images: int, epoch: int, seed: int, rank: int, world_size: int) -> np.ndarray:
    """A rank's share of the epoch's seeded shuffle (disjoint across ranks; the same on resume)."""
    sampler = DistributedSampler(range(n_images), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64)


def train_step(net: Callable[[torch.Tensor], Any], optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
               x: torch.Tensor, y: Any, autocast: Callable[[], Any] = contextlib.nullcontext) -> float:
    """One optimisation step on a batch (under DDP: this rank's share of it); returns the batch's loss. ``net`` is
    the network, or any function of the batch to logits (adaptation trains a tail on stored features); ``y`` is
    what ``loss_fn(net(x), y)`` takes: the class indices, or with the source adversary (class indices, source ids)."""
    with autocast():
        loss = loss_fn(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
