"""Fine-tuning of a model's last blocks on frozen features computed once.

The parent's EfficientNet-Lite backbone is cut before its last ``train_blocks`` blocks: the part before the cut
(stem and early blocks) stays frozen, so its output for each image is computed once (:func:`frozen_features`), for
the image as it is and for a few augmented versions of it. Every fine-tuning (each fold, each learning-curve draw,
the final model) then trains only the tail: the last blocks, the final convolution and the head, on those stored
features. Batch-norm statistics stay the parent's (a few hundred site images are too few to re-estimate them).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cxrscreen.errors import ConfigError
from cxrscreen.models.registry import XrayClassifier
from cxrscreen.training.augment import BatchAugment, augment_config
from cxrscreen.training.steps import class_weights, to_input, train_step

FEATURE_BATCH = 64


@dataclass(frozen=True)
class TuneSettings:
    """How one fine-tuning runs (the subset of :class:`~cxrscreen.adaptation.config.AdaptConfig` it needs)."""

    epochs: int
    patience: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float
    backbone_lr_factor: float = 1.0
    min_steps: int = 20


@dataclass
class TuneResult:
    """A fine-tuned model (full classifier, eval mode), the epoch kept and the validation loss per epoch."""

    model: XrayClassifier
    best_epoch: int
    val_losses: list[float] = field(default_factory=list)


def backbone_net(model: XrayClassifier):
    """The EfficientNet inside ``model``; a :class:`ConfigError` for architectures adapt cannot cut."""
    net = getattr(model.backbone, "net", None)
    if net is None or not hasattr(net, "_blocks"):
        raise ConfigError(f"adapt fine-tunes EfficientNet-Lite models; this model's backbone is {type(model.backbone).__name__}")
    return net


def cut_index(model: XrayClassifier, train_blocks: int) -> int:
    """Index of the first fine-tuned block (``len(blocks)`` when only the final convolution and head train)."""
    blocks = len(backbone_net(model)._blocks)
    if train_blocks > blocks:
        raise ConfigError(f"--train-blocks {train_blocks}: the backbone has {blocks} blocks")
    return blocks - train_blocks


def _drop_rate(net, index: int) -> float:
    rate = net._global_params.drop_connect_rate
    return rate * index / len(net._blocks) if rate else rate


@torch.inference_mode()
def frozen_features(model: XrayClassifier, images: np.ndarray, cut: int, views: int, augment: str, seed: int) -> torch.Tensor:
    """Outputs of the frozen part for uint8 images (N, S, S) -> float16 (views, N, C, h, w); view 0 is each image as
    it is, views 1.. are augmented (``augment`` preset, seeded)."""
    net = backbone_net(model)
    model.eval()
    augmenter = BatchAugment(augment_config(augment), seed=seed)
    out = []
    for view in range(views):
        chunks = []
        for start in range(0, len(images), FEATURE_BATCH):
            x = to_input(torch.from_numpy(images[start : start + FEATURE_BATCH]), torch.device("cpu"))
            if view:
                x = augmenter(x)
            x = net._swish(net._bn0(net._conv_stem((x - model.mean) / model.std)))
            for index, block in enumerate(net._blocks[:cut]):
                x = block(x, drop_connect_rate=_drop_rate(net, index))
            chunks.append(x.to(torch.float16))
        out.append(torch.cat(chunks))
    return torch.stack(out)


def tail_logits(model: XrayClassifier, features: torch.Tensor, cut: int) -> torch.Tensor:
    """Logits of frozen-part outputs (N, C, h, w) through the tail (blocks from ``cut``, final convolution, head)."""
    net = backbone_net(model)
    x = features.float()
    for index in range(cut, len(net._blocks)):
        x = net._blocks[index](x, drop_connect_rate=_drop_rate(net, index))
    x = net._swish(net._bn1(net._conv_head(x)))
    return model.head(model.dropout(torch.flatten(model.pool(x), 1)))


def tail_parameters(model: XrayClassifier, cut: int) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters fine-tuning changes, as (backbone: the blocks from ``cut`` and the final convolution, head);
    every other parameter of ``model`` is frozen."""
    net = backbone_net(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    backbone = [p for module in (*net._blocks[cut:], net._conv_head, net._bn1) for p in module.parameters()]
    head = list(model.head.parameters())
    for parameter in backbone + head:
        parameter.requires_grad_(True)
    return backbone, head


def _train_mode(model: XrayClassifier) -> None:
    """Dropout and drop-connect on, batch-norm statistics frozen (the parent's)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.inference_mode()
def predict_features(model: XrayClassifier, features: torch.Tensor, cut: int, batch: int = 256) -> np.ndarray:
    """Logits (N, C) of frozen-part outputs (N, C, h, w), in eval mode."""
    model.eval()
    return np.concatenate([tail_logits(model, features[s : s + batch], cut).numpy() for s in range(0, len(features), batch)]) \
        if len(features) else np.zeros((0, model.head.out_features), np.float32)


def fine_tune(parent: XrayClassifier, features: torch.Tensor, targets: np.ndarray, train_idx: np.ndarray,
              val_idx: np.ndarray | None, cut: int, settings: TuneSettings, seed: int,
              epochs: int | None = None) -> TuneResult:
    """A copy of ``parent`` whose tail is fine-tuned on ``features[:, train_idx]`` (each step draws one stored view
    per image) with class weights; with ``val_idx``, early stopping on the validation loss (the best epoch's
    weights are kept), else exactly ``epochs`` epochs. At least ``settings.min_steps`` steps run in all. The head
    learns at ``settings.lr``, the fine-tuned backbone layers at ``settings.lr * settings.backbone_lr_factor``."""
    model = copy.deepcopy(parent)
    backbone, head = tail_parameters(model, cut)
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": settings.lr * settings.backbone_lr_factor},
                                   {"params": head, "lr": settings.lr}], lr=settings.lr, weight_decay=settings.weight_decay)
    num_classes = model.head.out_features
    weights = class_weights(targets[train_idx], num_classes)
    # A class without training images (a site that has no COVID) would get the largest weight, and label smoothing
    # would spend it pulling every image towards that class: it gets none.
    weights[np.bincount(targets[train_idx], minlength=num_classes) == 0] = 0.0
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=settings.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss(weight=weights)
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_epochs = epochs or settings.epochs
    steps_per_epoch = math.ceil(len(train_idx) / settings.batch_size)
    # Tiny training sets (the learning curve's 10 per class) get more passes, not a handful of steps.
    passes = max(1, math.ceil(settings.min_steps / (steps_per_epoch * n_epochs)))
    target_t = torch.from_numpy(targets)
    best = TuneResult(model, 0)
    best_loss, best_state, stale = math.inf, None, 0
    for epoch in range(1, n_epochs + 1):
        _train_mode(model)
        for _ in range(passes):
            order = generator.permutation(train_idx)
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                if len(batch) < 2:
                    continue
                view = generator.integers(0, features.shape[0], len(batch))
                train_step(lambda x: tail_logits(model, x, cut), optimizer, loss_fn, features[view, batch], target_t[batch])
        if val_idx is None or len(val_idx) == 0:
            best.best_epoch = epoch
            continue
        logits = torch.from_numpy(predict_features(model, features[0, val_idx], cut))
        val_loss = float(val_loss_fn(logits, target_t[val_idx]))
        best.val_losses.append(val_loss)
        if val_loss < best_loss - 1e-4:
            best_loss, best.best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return TuneResult(model.eval(), best.best_epoch, best.val_losses)
