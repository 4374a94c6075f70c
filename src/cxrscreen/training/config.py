"""Training configuration: one dataclass with defaults that work; the CLI maps flags onto it and a run writes
the resolved config (``config.json``) next to its outputs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.errors import ConfigError, RunDirError
from cxrscreen.models.factory import get_spec
from cxrscreen.run_dir import RunDir
from cxrscreen.training.adversary import ADVERSARIES
from cxrscreen.training.sampler import BALANCE_MODES, DEFAULT_CAP
from cxrscreen.training.style import StyleConfig

MONITORS = ("macro_f1", "auc")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Everything a training run needs. ``out`` is the run directory."""

    data: list[str]
    out: str = "runs/default"
    classes: str = "covid,normal,viral"
    label_map: dict[str, str] = field(default_factory=dict)
    model: str = "efficientnet_lite0"
    pretrained: bool = True
    img_size: int | None = None  # None: the architecture's default_img_size
    lung_mode: str = "none"
    equalize: str = "none"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.05
    patience: int = 3
    monitor: str = "macro_f1"
    seed: int = 0
    split: str | None = None
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    dedup_distance: int = DEFAULT_MAX_DISTANCE
    limit_per_class: int | None = None
    frontal_only: bool = True
    augment: str = "default"
    balance: str = "none"  # see cxrscreen.training.sampler
    balance_cap: float = DEFAULT_CAP
    adversary: str = "none"  # see cxrscreen.training.adversary
    adversary_weight: float = 0.1
    style: tuple[str, ...] = ()  # kinds of cxrscreen.training.style.STYLE_KINDS; "histmatch,tone" is read too
    shards: str | None = None  # a folder or URL of `data shard --split` shards: the training side streams from them
    shard_workers: int = 2  # loader worker processes reading the shards (0: in the training process)
    num_threads: int | None = None
    device: str = "auto"
    amp: bool = True
    on_bad_image: str = "skip"
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("--data is required (a dataset folder or CSV manifest; repeat to combine)")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2, got {self.batch_size}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"--lr must be in (0, 1), got {self.lr}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"--monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.on_bad_image not in ("skip", "fail"):
            raise ConfigError(f"--on-bad-image must be skip or fail, got {self.on_bad_image!r}")
        if self.limit_per_class is not None and self.limit_per_class < 2:
            raise ConfigError(f"--limit-per-class must be at least 2, got {self.limit_per_class}")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"--balance must be one of {', '.join(BALANCE_MODES)}, got {self.balance!r}")
        if self.balance_cap < 1:
            raise ConfigError(f"--balance-cap must be at least 1 (an image drawn at most that many times), got {self.balance_cap}")
        if self.adversary not in ADVERSARIES:
            raise ConfigError(f"--adversary must be one of {', '.join(ADVERSARIES)}, got {self.adversary!r}")
        if self.adversary_weight <= 0:
            raise ConfigError(f"--adversary-weight must be positive, got {self.adversary_weight}")
        if self.shards and self.balance != "none":
            raise ConfigError("--balance draws images in any order; with --shards the images stream: leave --balance out")
        if self.shard_workers < 0:
            raise ConfigError(f"--shard-workers must be 0 or more, got {self.shard_workers}")
        self.style = self.style_config.kinds  # validated, in canonical order
        self.fractions = tuple(float(f) for f in self.fractions)  # type: ignore[assignment]
        if len(self.fractions) != 3 or any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ConfigError(f"split fractions must be three positive numbers summing to 1, got {self.fractions}")
        if self.img_size is None:
            self.img_size = get_spec(self.model).default_img_size
        self.preprocessing  # validates img_size, lung_mode, equalize

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(img_size=self.img_size, lung_mode=self.lung_mode, equalize=self.equalize)

    @property
    def style_config(self) -> StyleConfig:
        """The style augmentations (default strengths) of ``style``."""
        if isinstance(self.style, str):
            return StyleConfig.parse(self.style)
        return StyleConfig(kinds=tuple(self.style))

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fractions"] = list(self.fractions)
        data["style"] = list(self.style)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "fractions" in values:
            values["fractions"] = tuple(values["fractions"])
        return cls(**values)


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The saved config of a run, for ``--resume`` and ``refit-guard``: the same data, split, model and schedule."""
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    if not files.config.is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {files.config.name})")
    try:
        cfg = TrainConfig.from_dict(json.loads(files.config.read_text()))
    except (ValueError, TypeError) as exc:
        raise RunDirError(f"{files.config}: unreadable run config ({exc})") from None
    cfg.out = str(run_dir)
    return cfg
