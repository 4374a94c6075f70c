"""A source adversary (``--adversary source``): a head that tells the training image's collection from the pooled
features, behind a gradient-reversal layer, so that the backbone learns features that do not tell it.

The loss is ``class_loss + weight * source_loss``; the head descends the source loss, the backbone ascends it (the
reversal flips the sign of the gradient that flows back through the features). The head lives only in training
(and in ``last.pt``, for resuming): the saved classifier, its ONNX export and every command that loads it are as
without it.

It is refused unless at least two collections each hold at least two classes: where every collection holds one
class, telling the collection is telling the class, and removing the one removes the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cxrscreen.errors import ConfigError
from cxrscreen.models.registry import XrayClassifier
from cxrscreen.training.steps import class_weights

ADVERSARIES = ("none", "source")
MIN_MIXED_SOURCES = 2  # collections holding at least two classes


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, scale)


class AdversarialClassifier(nn.Module):
    """The classifier plus a source head on its pooled features (reversed gradient).

    Input: as :class:`XrayClassifier`. Output: (class logits (N, num_classes), source logits (N, num_sources)).
    """

    def __init__(self, model: XrayClassifier, num_sources: int, hidden: int = 128):
        super().__init__()
        self.model = model
        self.source_head = nn.Sequential(nn.Linear(model.head.in_features, hidden), nn.ReLU(),
                                         nn.Linear(hidden, num_sources))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(x)
        return self.model.classify(features), self.source_head(reverse_gradient(features))


class AdversarialLoss(nn.Module):
    """``class_loss(logits, y) + weight * source_loss(source_logits, s)`` of ``((logits, source_logits), (y, s))``."""

    def __init__(self, class_loss: nn.Module, source_loss: nn.Module, weight: float):
        super().__init__()
        self.class_loss, self.source_loss, self.weight = class_loss, source_loss, weight

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        (logits, source_logits), (y, s) = outputs, targets
        return self.class_loss(logits, y) + self.weight * self.source_loss(source_logits, s)


def check_sources_hold_classes(targets: np.ndarray, sources: np.ndarray, classes: list[str], collections: list[str]) -> None:
    """Refuse the adversary unless at least two collections each hold at least two classes (``targets`` and
    ``sources`` index ``classes`` and ``collections``, one entry per training image)."""
    held = {name: sorted({classes[t] for t in targets[sources == i]}) for i, name in enumerate(collections)}
    mixed = [name for name, names in held.items() if len(names) >= 2]
    if len(mixed) < MIN_MIXED_SOURCES:
        found = "; ".join(f"{name}: {', '.join(names)}" for name, names in held.items())
        raise ConfigError(
            f"--adversary source needs at least {MIN_MIXED_SOURCES} training collections holding 2 or more classes "
            f"each, found {len(mixed)} ({found}): where a collection holds one class, removing what tells the "
            "collection would remove the class too")


def source_adversary(model: XrayClassifier, class_loss: nn.Module, targets: np.ndarray, sources: np.ndarray,
                     classes: list[str], collections: list[str], weight: float, draws: np.ndarray | None = None
                     ) -> tuple[AdversarialClassifier, AdversarialLoss]:
    """The network to train (classifier + source head, on ``model``'s device) and its loss, after
    :func:`check_sources_hold_classes`; the source loss weighs each collection by its inverse frequency in an
    epoch's draws (``draws`` per image, as :func:`class_weights`)."""
    check_sources_hold_classes(targets, sources, classes, collections)
    device = next(model.parameters()).device
    network = AdversarialClassifier(model, len(collections)).to(device)
    source_loss = nn.CrossEntropyLoss(weight=class_weights(sources, len(collections), draws).to(device))
    return network, AdversarialLoss(class_loss, source_loss, weight)
