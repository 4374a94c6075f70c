"""Batch augmentation of prepared X-rays, as tensor ops on whole batches (no per-image Python loop).

Input and output follow the one image convention: float tensor (N, 1, S, S) with values in [0, 1].
:class:`BatchAugment` first draws every random parameter of a batch from a ``torch.Generator``
(:meth:`BatchAugment.sample`, so the same seed gives the same batch), then applies them
(:meth:`BatchAugment.apply`), in this order:

1. geometry, one ``affine_grid``/``grid_sample`` pass: random resized crop, small rotation, translation
   (horizontal flip off by default: the heart is on the patient's left, a flipped X-ray is not a real one);
2. random erasing of a border band or a corner, filled with a random grey level, to break source cues that sit
   there (text markers, burnt-in labels, collimator edges);
3. gamma, contrast and brightness jitter;
4. gaussian blur;
5. gaussian noise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrscreen.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation; the defaults suit radiographs (mild geometry, no flip).

    - ``crop_area``: range of the crop's area as a fraction of the image (random resized crop; 1 = no crop).
    - ``crop_aspect``: range of the crop's aspect ratio (drawn log-uniformly).
    - ``max_rotation_deg``: rotation drawn uniformly in +-this.
    - ``max_translate``: shift drawn uniformly in +-this fraction of the side, on each axis.
    - ``hflip_p``: probability of a horizontal flip.
    - ``max_gamma``: gamma drawn log-uniformly in [1/max_gamma, max_gamma] (1 = off).
    - ``contrast`` / ``brightness``: contrast factor in [1-c, 1+c] around the image mean; offset in +-b.
    - ``blur_p`` / ``blur_sigma``: probability of a gaussian blur and its sigma range in pixels.
    - ``noise_p`` / ``max_noise_std``: probability of additive gaussian noise, std drawn in [0, max_noise_std].
    - ``erase_p`` / ``erase_size``: probability of erasing one border band or corner, and its size range as a
      fraction of the side.
    """

    crop_area: tuple[float, float] = (0.75, 1.0)
    crop_aspect: tuple[float, float] = (0.9, 1.1)
    max_rotation_deg: float = 7.0
    max_translate: float = 0.04
    hflip_p: float = 0.0
    max_gamma: float = 1.25
    contrast: float = 0.15
    brightness: float = 0.05
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise_p: float = 0.3
    max_noise_std: float = 0.02
    erase_p: float = 0.5
    erase_size: tuple[float, float] = (0.04, 0.15)

    def __post_init__(self) -> None:
        checks = [
            ("crop_area", 0 < self.crop_area[0] <= self.crop_area[1] <= 1),
            ("crop_aspect", 0 < self.crop_aspect[0] <= self.crop_aspect[1]),
            ("max_rotation_deg", 0 <= self.max_rotation_deg <= 180),
            ("max_translate", 0 <= self.max_translate <= 0.5),
            ("max_gamma", self.max_gamma >= 1),
            ("contrast", 0 <= self.contrast < 1),
            ("brightness", 0 <= self.brightness <= 1),
            ("blur_sigma", 0 < self.blur_sigma[0] <= self.blur_sigma[1]),
            ("max_noise_std", self.max_noise_std >= 0),
            ("erase_size", 0 <= self.erase_size[0] <= self.erase_size[1] <= 0.5),
        ]
        checks += [(name, 0 <= getattr(self, name) <= 1) for name in ("hflip_p", "blur_p", "noise_p", "erase_p")]
        for name, valid in checks:
            if not valid:
                raise ConfigError(f"augment {name}={getattr(self, name)!r} is out of range")

    @classmethod
    def identity(cls) -> "AugmentConfig":
        """A config under which :class:`BatchAugment` returns its input unchanged."""
        return cls(
            crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), max_rotation_deg=0.0, max_translate=0.0,
            max_gamma=1.0, contrast=0.0, brightness=0.0, blur_p=0.0, noise_p=0.0, erase_p=0.0,
        )

    @property
    def has_geometry(self) -> bool:
        return (
            self.crop_area != (1.0, 1.0) or self.crop_aspect != (1.0, 1.0) or self.max_rotation_deg > 0
            or self.max_translate > 0 or self.hflip_p > 0
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig.identity(),
    "light": AugmentConfig(
        crop_area=(0.9, 1.0), max_rotation_deg=4.0, max_translate=0.02, max_gamma=1.1, contrast=0.08,
        brightness=0.03, blur_p=0.1, noise_p=0.1, erase_p=0.25,
    ),
    "default": AugmentConfig(),
    "strong": AugmentConfig(
        crop_area=(0.6, 1.0), crop_aspect=(0.85, 1.15), max_rotation_deg=10.0, max_translate=0.06,
        max_gamma=1.4, contrast=0.25, brightness=0.08, blur_p=0.3, blur_sigma=(0.3, 1.5), noise_p=0.4,
        max_noise_std=0.03, erase_p=0.7, erase_size=(0.05, 0.2),
    ),
}


def augment_config(name: str) -> AugmentConfig:
    """The named preset (``--augment``): none, light, default or strong."""
    if name not in AUGMENT_PRESETS:
        raise ConfigError(f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {name!r}")
    return AUGMENT_PRESETS[name]


@dataclass
class AugmentParams:
    """Random parameters of one batch of N images (every tensor has N rows, on the generator's device)."""

    theta: torch.Tensor  # (N, 2, 3) affine matrices, output -> input normalised coordinates
    erase: torch.Tensor  # (N,) bool
    erase_kind: torch.Tensor  # (N,) int in [0, 8): 0-3 bands top/bottom/left/right, 4-7 corners tl/tr/bl/br
    erase_size: torch.Tensor  # (N,) fraction of the side
    erase_fill: torch.Tensor  # (N,) grey level in [0, 1]
    gamma: torch.Tensor  # (N,)
    contrast: torch.Tensor  # (N,)
    brightness: torch.Tensor  # (N,)
    blur: torch.Tensor  # (N,) bool
    blur_sigma: torch.Tensor  # (N,) pixels
    noise_std: torch.Tensor  # (N,), 0 where no noise


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws in [low, high) from ``generator``, on its device (so a seed gives the same draws anywhere)."""
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def log_uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.exp(uniform(n, math.log(low), math.log(high), generator))


def _bernoulli(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device) < p


class BatchAugment:
    """Random augmentation of a batch (N, 1, S, S) in [0, 1] -> same shape, dtype and range.

    Deterministic given the generator: ``BatchAugment(cfg, seed=0)`` owns a seeded CPU generator; pass
    ``generator=`` to a call to use another one.
    """

    def __init__(self, cfg: AugmentConfig | None = None, seed: int = 0):
        self.cfg = cfg or AugmentConfig()
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        generator = generator or self.generator
        return self.apply(images, self.sample(images.shape[0], generator), generator)

    def sample(self, n: int, generator: torch.Generator) -> AugmentParams:
        """Draw the parameters of ``n`` images (always the same number of draws, so seeds stay aligned)."""
        cfg = self.cfg
        area = uniform(n, *cfg.crop_area, generator)
        aspect = log_uniform(n, *cfg.crop_aspect, generator)
        half_x = torch.sqrt(area * aspect).clamp(max=1.0)
        half_y = torch.sqrt(area / aspect).clamp(max=1.0)
        # Crop centre anywhere that keeps the crop inside the image, then the extra shift (2 = one side).
        centre_x = (1 - half_x) * uniform(n, -1, 1, generator) + 2 * uniform(n, -1, 1, generator) * cfg.max_translate
        centre_y = (1 - half_y) * uniform(n, -1, 1, generator) + 2 * uniform(n, -1, 1, generator) * cfg.max_translate
        angle = torch.deg2rad(uniform(n, -cfg.max_rotation_deg, cfg.max_rotation_deg, generator))
        flip = torch.where(_bernoulli(n, cfg.hflip_p, generator), -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([cos * half_x * flip, -sin * half_y, centre_x], dim=1),
                torch.stack([sin * half_x * flip, cos * half_y, centre_y], dim=1),
            ],
            dim=1,
        )
        return AugmentParams(
            theta=theta,
            erase=_bernoulli(n, cfg.erase_p, generator),
            erase_kind=torch.randint(0, 8, (n,), generator=generator, device=generator.device),
            erase_size=uniform(n, *cfg.erase_size, generator),
            erase_fill=uniform(n, 0.0, 1.0, generator),
            gamma=log_uniform(n, 1 / cfg.max_gamma, cfg.max_gamma, generator),
            contrast=uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator),
            brightness=uniform(n, -cfg.brightness, cfg.brightness, generator),
            blur=_bernoulli(n, cfg.blur_p, generator),
            blur_sigma=uniform(n, *cfg.blur_sigma, generator),
            noise_std=uniform(n, 0.0, cfg.max_noise_std, generator) * _bernoulli(n, cfg.noise_p, generator),
        )

    def apply(
        self, images: torch.Tensor, params: AugmentParams, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Apply drawn parameters; ``generator`` draws the noise pixels (defaults to the augmenter's own)."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected a batch (N, 1, S, S), got shape {tuple(images.shape)}")
        cfg = self.cfg
        p = {f.name: getattr(params, f.name).to(images.device) for f in dataclasses.fields(params)}
        out = images
        if cfg.has_geometry:
            out = random_affine(out, p["theta"].to(out.dtype))
        if cfg.erase_p > 0:
            out = erase_border(out, p["erase"], p["erase_kind"], p["erase_size"], p["erase_fill"])
        if cfg.max_gamma > 1:
            out = out.clamp(0, 1) ** p["gamma"].view(-1, 1, 1, 1).to(out.dtype)
        if cfg.contrast > 0 or cfg.brightness > 0:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * p["contrast"].view(-1, 1, 1, 1) + mean + p["brightness"].view(-1, 1, 1, 1)
        if cfg.blur_p > 0:
            out = torch.where(p["blur"].view(-1, 1, 1, 1), gaussian_blur(out, p["blur_sigma"], cfg.blur_sigma[1]), out)
        if cfg.noise_p > 0 and cfg.max_noise_std > 0:
            gen = generator or self.generator
            noise = torch.randn(out.shape, generator=gen, device=gen.device, dtype=out.dtype).to(out.device)
            out = out + noise * p["noise_std"].view(-1, 1, 1, 1).to(out.dtype)
        return out.clamp(0.0, 1.0) if out is not images else images


def random_affine(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (N, 1, S, S) by per-image affine maps ``theta`` (N, 2, 3); outside the image is black (0)."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def erase_border(
    images: torch.Tensor, erase: torch.Tensor, kind: torch.Tensor, size: torch.Tensor, fill: torch.Tensor
) -> torch.Tensor:
    """Fill one border band (kinds 0-3: top, bottom, left, right) or corner (4-7: tl, tr, bl, br) of each
    image where ``erase`` is set, ``size`` (fraction of the side) deep, with the grey level ``fill``."""
    n, _, height, width = images.shape
    ys = (torch.arange(height, device=images.device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=images.device, dtype=torch.float32) + 0.5) / width
    size = size.view(n, 1, 1)
    is_corner = kind >= 4
    top = (kind == 0) | (kind == 4) | (kind == 5)
    bottom = (kind == 1) | (kind == 6) | (kind == 7)
    left = (kind == 2) | (kind == 4) | (kind == 6)
    right = (kind == 3) | (kind == 5) | (kind == 7)
    rows = (top.view(n, 1, 1) & (ys.view(1, -1, 1) < size)) | (bottom.view(n, 1, 1) & (ys.view(1, -1, 1) > 1 - size))
    cols = (left.view(n, 1, 1) & (xs.view(1, 1, -1) < size)) | (right.view(n, 1, 1) & (xs.view(1, 1, -1) > 1 - size))
    mask = torch.where(is_corner.view(n, 1, 1), rows & cols, rows | cols) & erase.view(n, 1, 1)
    return torch.where(mask.unsqueeze(1), fill.view(n, 1, 1, 1).to(images.dtype), images)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable gaussian blur of (N, 1, S, S) with a per-image ``sigma`` (N,) in pixels (reflect padding)."""
    n = images.shape[0]
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1).to(images.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    # One group per image: (1, N, S, S) convolved with N different kernels.
    flat = F.pad(images.transpose(0, 1), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n, 1, 1, -1), groups=n)
    flat = F.conv2d(flat, kernel.view(n, 1, -1, 1), groups=n)
    return flat.transpose(0, 1)
