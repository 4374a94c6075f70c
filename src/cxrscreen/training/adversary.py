"""A class-conditional source adversary (``--adversary source``): a head that tells a training image's collection
from the pooled features *among the images of its class*, behind a gradient-reversal layer, so that the backbone
learns features that do not tell the collection apart within a class (as in conditional domain-adversarial
training).

The rule: the source loss counts only the images of a *mixed* class, one drawn from two or more collections of the
training split; for such an image the head picks among the collections that hold its class (one block of source
logits per class, the other collections masked out). An image of a class that comes from one collection adds
nothing: there the collection is the class, and hiding the one would hide the other. Each mixed class counts
equally, and within a class each of its collections (inverse frequency over an epoch's draws). The adversary is
refused when no class is drawn from two or more collections (source and class are the same everywhere). So on
``covid,other`` over the Radiography DB (covid, other) and single-class collections of ``other``, the head tells
the collections of the ``other`` images apart and never sees COVID.

The loss is ``class_loss + weight * source_loss``; the head descends the source loss, the backbone ascends it (the
reversal flips the sign of the gradient that flows back through the features). The head lives only in training
(and in ``last.pt``, for resuming): the saved classifier, its ONNX export and every command that loads it are as
without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrscreen.errors import ConfigError
from cxrscreen.models.registry import XrayClassifier

ADVERSARIES = ("none", "source")
MIN_SOURCES_PER_CLASS = 2  # a class drawn from at least this many collections is "mixed"


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
    """The classifier plus a source head on its pooled features (reversed gradient), one block of source logits
    per class.

    Input: as :class:`XrayClassifier`. Output: (class logits (N, num_classes), source logits (N, num_classes,
    num_sources)); ``source_logits[:, c]`` tells the collection of an image of class ``c``.
    """

    def __init__(self, model: XrayClassifier, num_sources: int, hidden: int = 128):
        super().__init__()
        self.model = model
        self.num_classes, self.num_sources = model.head.out_features, num_sources
        self.source_head = nn.Sequential(nn.Linear(model.head.in_features, hidden), nn.ReLU(),
                                         nn.Linear(hidden, self.num_classes * num_sources))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(x)
        source_logits = self.source_head(reverse_gradient(features))
        return self.model.classify(features), source_logits.view(-1, self.num_classes, self.num_sources)


class ConditionalSourceLoss(nn.Module):
    """Weighted cross-entropy of each image's collection among the collections that hold its class.

    ``cell_weights`` (num_classes, num_sources): the weight of an image of class c from collection s, zero where
    c is not a mixed class; a collection that does not hold c is masked out of c's logits. The batch's loss is the
    weighted mean (zero when no image of the batch has weight).
    """

    def __init__(self, cell_weights: torch.Tensor):
        super().__init__()
        self.register_buffer("cell_weights", cell_weights.float())
        self.register_buffer("held", cell_weights > 0)

    def forward(self, source_logits: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(y), device=y.device)
        logits = source_logits[rows, y].float().masked_fill(~self.held[y], float("-inf"))
        weights = self.cell_weights[y, s]
        per_image = F.cross_entropy(logits.masked_fill(weights[:, None] == 0, 0.0), s, reduction="none")
        return (weights * per_image).sum() / weights.sum().clamp_min(1e-12)


class AdversarialLoss(nn.Module):
    """``class_loss(logits, y) + weight * source_loss(source_logits, y, s)`` of ``((logits, source_logits), (y, s))``."""

    def __init__(self, class_loss: nn.Module, source_loss: nn.Module, weight: float):
        super().__init__()
        self.class_loss, self.source_loss, self.weight = class_loss, source_loss, weight

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        (logits, source_logits), (y, s) = outputs, targets
        return self.class_loss(logits, y) + self.weight * self.source_loss(source_logits, y, s)


def class_collections(targets: np.ndarray, sources: np.ndarray, classes: list[str], collections: list[str]
                      ) -> dict[str, list[str]]:
    """The collections each class is drawn from in the training split (``targets`` and ``sources`` index
    ``classes`` and ``collections``, one entry per training image)."""
    return {name: [collections[s] for s in sorted(set(sources[targets == c].tolist()))] for c, name in enumerate(classes)}


def check_mixed_classes(targets: np.ndarray, sources: np.ndarray, classes: list[str], collections: list[str]) -> list[str]:
    """The mixed classes (drawn from two or more collections); refuses the adversary when there is none."""
    drawn = class_collections(targets, sources, classes, collections)
    mixed = [name for name, names in drawn.items() if len(names) >= MIN_SOURCES_PER_CLASS]
    if not mixed:
        found = "; ".join(f"{name}: {', '.join(names) or 'no image'}" for name, names in drawn.items())
        raise ConfigError(
            f"--adversary source needs a class drawn from {MIN_SOURCES_PER_CLASS} or more training collections, "
            f"found none ({found}): where each class comes from one collection, removing what tells the collection "
            "would remove the class too")
    return mixed


def source_cell_weights(targets: np.ndarray, sources: np.ndarray, num_classes: int, num_sources: int,
                        draws: np.ndarray | None = None) -> torch.Tensor:
    """(num_classes, num_sources) weights of the conditional source loss: zero outside the mixed classes; inside,
    each mixed class and within it each of its collections weighs the same over an epoch's draws (``draws`` per
    image, as :func:`cxrscreen.training.steps.class_weights`; default once); the weighted draws sum to the number
    of drawn images of the mixed classes."""
    counts = np.zeros((num_classes, num_sources))
    np.add.at(counts, (targets, sources), 1.0 if draws is None else draws)
    held = counts > 0
    mixed = held.sum(axis=1) >= MIN_SOURCES_PER_CLASS
    cells = held & mixed[:, None]
    share = 1.0 / (mixed.sum() * np.maximum(held.sum(axis=1, keepdims=True), 1))  # of each cell in the loss
    weights = np.where(cells, counts[cells].sum() * share / np.maximum(counts, 1e-12), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def source_adversary(model: XrayClassifier, class_loss: nn.Module, targets: np.ndarray, sources: np.ndarray,
                     classes: list[str], collections: list[str], weight: float, draws: np.ndarray | None = None
                     ) -> tuple[AdversarialClassifier, AdversarialLoss]:
    """The network to train (classifier + source head, on ``model``'s device) and its loss, after
    :func:`check_mixed_classes`; the source loss weighs cells as :func:`source_cell_weights`."""
    check_mixed_classes(targets, sources, classes, collections)
    device = next(model.parameters()).device
    network = AdversarialClassifier(model, len(collections)).to(device)
    cells = source_cell_weights(targets, sources, len(classes), len(collections), draws)
    return network, AdversarialLoss(class_loss, ConditionalSourceLoss(cells).to(device), weight)
