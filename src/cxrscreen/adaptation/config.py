"""Configuration of ``cxrscreen adapt``: one dataclass with defaults that work; the CLI maps flags onto it and a run
writes the resolved config (``config.json``) next to its outputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE
from cxrscreen.errors import ConfigError

MIN_IMAGES_PER_CLASS = 10
DEFAULT_SIZES = (10, 25, 50, 100)


@dataclass
class AdaptConfig:
    """Validate a model on a site's labelled images, fine-tune it there by cross-validation, and save the result.

    ``model``: run directory, checkpoint file or None (the bundled model). ``data``: the site's collections.
    ``classes``: the site's classes (default: the model's); a coarser set (e.g. ``covid,other``) merges the
    model's head rows. ``positive``: the class the operating threshold is set for (default ``covid``).
    ``train_blocks``: how many of the backbone's last blocks are fine-tuned (with its last convolution and the
    head); the blocks before them stay frozen and their outputs are computed once. The head learns at ``lr``, the
    fine-tuned backbone layers at ``lr * backbone_lr_factor``. ``views``: the frozen outputs
    are kept for this many versions of each image (the first as it is, the others augmented with ``augment``).
    ``sizes``: labelled images per class of the learning curve (empty: no curve), ``repeats`` draws of each.
    """

    data: list[str]
    out: str = "runs/adapt"
    model: str | None = None
    classes: str | None = None
    label_map: dict[str, str] = field(default_factory=dict)
    positive: str = "covid"
    folds: int = 5
    target_sensitivity: float = 0.95
    sizes: tuple[int, ...] = DEFAULT_SIZES
    repeats: int = 3
    train_blocks: int = 3
    views: int = 4
    augment: str = "default"
    epochs: int = 12
    patience: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_factor: float = 0.3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    inner_fraction: float = 0.2
    by_source: bool = False
    n_resamples: int = 1000
    seed: int = 0
    dedup_distance: int = DEFAULT_MAX_DISTANCE
    frontal_only: bool = True
    num_threads: int | None = None
    name: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("--data is required: the site's labelled images (a dataset folder or CSV manifest)")
        self.sizes = tuple(int(s) for s in self.sizes)
        checks = [
            (self.folds >= 2, f"--folds must be at least 2, got {self.folds}"),
            (0 < self.target_sensitivity < 1, f"--target-sensitivity must be in (0, 1), got {self.target_sensitivity}"),
            (all(s >= 2 for s in self.sizes), f"--sizes must be at least 2 images per class, got {self.sizes}"),
            (self.repeats >= 1, f"--repeats must be at least 1, got {self.repeats}"),
            (self.train_blocks >= 0, f"--train-blocks must be 0 or more, got {self.train_blocks}"),
            (self.views >= 1, f"--views must be at least 1, got {self.views}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be at least 2, got {self.batch_size}"),
            (0 < self.lr < 1, f"--lr must be in (0, 1), got {self.lr}"),
            (0 < self.backbone_lr_factor <= 1, f"--backbone-lr-factor must be in (0, 1], got {self.backbone_lr_factor}"),
            (0 < self.inner_fraction < 0.5, f"inner_fraction must be in (0, 0.5), got {self.inner_fraction}"),
            (self.n_resamples >= 0, f"--bootstrap must be 0 or more, got {self.n_resamples}"),
        ]
        for valid, message in checks:
            if not valid:
                raise ConfigError(message)

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sizes"] = list(self.sizes)
        return data


def parse_sizes(spec: str) -> tuple[int, ...]:
    """``"10,25,50"`` (``--sizes``) -> (10, 25, 50); ``""`` or ``none`` -> no learning curve."""
    if spec.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(sorted({int(part) for part in spec.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"--sizes expects numbers of images per class like 10,25,50, got {spec!r}") from None
