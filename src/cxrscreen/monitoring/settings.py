"""How the drift statistic looks (:class:`DriftSettings`), light on purpose: the command line reads its defaults
for ``--help`` without loading scipy."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxrscreen.errors import ConfigError

MIN_IMAGES = 30  # fewer screened images than this give no look: the tests would have next to no power


@dataclass(frozen=True)
class DriftSettings:
    """``window``: images per look; ``step``: images between looks; ``alpha``: the chance of a false alarm
    within ``horizon`` images that the corrections allow."""

    window: int = 200
    step: int = 10
    alpha: float = 0.05
    horizon: int = 1000

    def __post_init__(self) -> None:
        if self.window < MIN_IMAGES:
            raise ConfigError(f"--window must be at least {MIN_IMAGES}, got {self.window}")
        if not 1 <= self.step <= self.window:
            raise ConfigError(f"--step must be between 1 and the window ({self.window}), got {self.step}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"--alpha must be in (0, 1), got {self.alpha}")
        if self.horizon < self.step:
            raise ConfigError(f"--horizon must be at least the step ({self.step}), got {self.horizon}")

    @property
    def looks_per_horizon(self) -> int:
        return math.ceil(self.horizon / self.step)
