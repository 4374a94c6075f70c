"""Augmentation that breaks a scanner's look, so that a model learns the lungs rather than the hospital.

Two places act on a training batch, each optional (``StyleConfig.kinds``):

- on the pixels, :class:`StyleAugment` (the same float batch the network gets: (N, 1, S, S) in [0, 1], what
  :func:`cxrscreen.training.steps.to_input` and :class:`cxrscreen.training.augment.BatchAugment` give):

  - ``histmatch``: an image's grey-level histogram is matched to that of a random image of *another* source in the
    batch (quantile mapping);
  - ``tone``: a random monotone tone curve (a gamma, then a sigmoid contrast curve or its inverse);

- inside the network, ``mixstyle`` (Zhou et al., "Domain generalization with MixStyle", ICLR 2021): after the early
  blocks of the backbone, each sample's channel means and standard deviations are mixed with those of a sample of
  another source (:func:`insert_mixstyle`). Only in training mode: in eval mode (validation, inference, ONNX
  export) the network is unchanged.

Background: exact zeros (``BatchAugment``'s padding outside a rotated or shifted image, black borders) are left out
of both histograms and stay zero under both pixel augmentations, so the share of black does not decide where the
rest lands. Lung masking (``lung_mode`` ``mask``/``crop_mask``) does not black out the background: it fills it with
the image's mean, a flat region. Quantile mapping gives tied pixels one value (their mid-rank), and a tone curve is
a function of the value, so that fill stays flat; it takes the reference's grey level, not its own scanner's.

Every random choice comes from the ``torch.Generator`` passed in, so a seed gives the same batch on any device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrscreen.errors import ConfigError
from cxrscreen.training.augment import uniform

STYLE_KINDS = ("histmatch", "tone", "mixstyle")
PIXEL_KINDS = ("histmatch", "tone")

# Tone curve ranges: gamma drawn log-uniformly in [1/MAX_TONE_GAMMA, MAX_TONE_GAMMA]; the sigmoid's slope in
# TONE_SLOPE (about identity at 1, strong at 8) and its centre in TONE_CENTRE; contrast raised or lowered with
# equal chance. Wide on purpose: scanners and their post-processing differ by more than BatchAugment's jitter.
MAX_TONE_GAMMA = 1.8
TONE_SLOPE = (1.0, 8.0)
TONE_CENTRE = (0.3, 0.7)

# MixStyle follows the end of the backbone's stages at these output strides (1/4, 1/8, 1/16 of the input side),
# as the paper's res1-res3 of a ResNet; the deepest stages keep what the classes need.
MIXSTYLE_STRIDES = (4, 8, 16)
MIXSTYLE_EPS = 1e-6
_PROBE_SIDE = 64


@dataclass(frozen=True)
class StyleConfig:
    """Which style augmentations a run uses (``kinds``, a subset of :data:`STYLE_KINDS`, in that order) and how often.

    - ``p``: probability per image of ``histmatch`` and (independently) of ``tone``.
    - ``mixstyle_p``: probability per training batch that MixStyle mixes; ``mixstyle_alpha``: the mixing weight of
      a sample's own statistics is drawn from Beta(alpha, alpha) (small alpha: mostly close to 0 or 1).
    """

    kinds: tuple[str, ...] = ()
    p: float = 0.5
    mixstyle_p: float = 0.5
    mixstyle_alpha: float = 0.1

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in STYLE_KINDS]
        if unknown:
            raise ConfigError(f"unknown style augmentation {unknown[0]!r}; choose from {', '.join(STYLE_KINDS)}")
        # Canonical order and no repeats, so that equal choices compare (and are stored) equal.
        object.__setattr__(self, "kinds", tuple(kind for kind in STYLE_KINDS if kind in self.kinds))
        for name in ("p", "mixstyle_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"style {name}={getattr(self, name)!r} must be between 0 and 1")
        if not self.mixstyle_alpha > 0:
            raise ConfigError(f"style mixstyle_alpha={self.mixstyle_alpha!r} must be positive")

    @property
    def has_mixstyle(self) -> bool:
        return "mixstyle" in self.kinds

    @property
    def pixel_kinds(self) -> tuple[str, ...]:
        """The kinds :class:`StyleAugment` applies (the others act inside the network)."""
        return tuple(kind for kind in self.kinds if kind in PIXEL_KINDS)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "kinds": list(self.kinds)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StyleConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def parse(cls, text: str) -> "StyleConfig":
        """``"histmatch,tone"`` -> a config with those kinds and default strengths; ``""`` or ``"none"``: no kind."""
        names = [name.strip() for name in text.split(",") if name.strip()]
        return cls(kinds=() if names == ["none"] else tuple(names))


def other_source_partners(source_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample of a batch, a random other sample of a different source (uniform among them), and whether
    there is one: ``(partner (N,) long, has_partner (N,) bool)`` on the generator's device."""
    ids = source_ids.to(generator.device).view(-1)
    other = ids.view(-1, 1) != ids.view(1, -1)
    scores = torch.rand(other.shape, generator=generator, device=generator.device)
    partner = torch.where(other, scores, -1.0).argmax(dim=1)
    return partner, other.any(dim=1)


def match_histograms(images: torch.Tensor, reference: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Map each selected image's grey levels onto the quantiles of image ``reference[i]`` of the same batch.

    ``images`` (N, 1, S, S) in [0, 1]; ``reference`` (N,) long; ``selected`` (N,) bool. A pixel at mid-rank r among
    its image's n foreground (non-zero) pixels gets the reference's foreground quantile r / (n - 1), linearly
    interpolated: monotone, ties keep one value, and with equal pixel counts and no ties the output's sorted values
    are the reference's. Zeros stay zero; an image without foreground, or whose reference has none, is unchanged.
    """
    n = images.shape[0]
    flat = images.reshape(n, -1).float().contiguous()
    foreground = flat > 0
    counts = foreground.sum(dim=1)
    ordered = torch.where(foreground, flat, math.inf).sort(dim=1).values.contiguous()
    below = torch.searchsorted(ordered, flat, side="left")
    up_to = torch.searchsorted(ordered, flat, side="right")
    quantile = (below + up_to - 1).float() / 2 / (counts - 1).clamp(min=1).view(-1, 1)
    ref_last = (counts[reference] - 1).clamp(min=0).view(-1, 1)
    position = quantile.clamp(0, 1) * ref_last
    low = position.floor().long().clamp(max=ref_last)
    high = (low + 1).clamp(max=ref_last)
    ref_sorted = ordered[reference]
    low_value, high_value = ref_sorted.gather(1, low), ref_sorted.gather(1, high)
    mapped = low_value + (position - low) * (high_value - low_value)
    use = (selected.to(images.device) & (counts > 0) & (counts[reference] > 0)).view(-1, 1)
    out = torch.where(foreground & use, mapped, flat)
    return out.reshape(images.shape).to(images.dtype)


def tone_curve(
    images: torch.Tensor, gamma: torch.Tensor, slope: torch.Tensor, centre: torch.Tensor, lower: torch.Tensor
) -> torch.Tensor:
    """Per-image monotone curve on (N, 1, S, S) in [0, 1] with f(0) = 0 and f(1) = 1: ``x ** gamma``, then a
    sigmoid of ``slope`` around ``centre`` scaled to [0, 1] (more contrast there) or, where ``lower``, its inverse
    (less contrast there). Parameters are (N,) tensors; 0 and 1 stay exactly themselves."""
    view = {"dtype": torch.float32, "device": images.device}
    gamma, slope, centre = (t.to(**view).view(-1, 1, 1, 1) for t in (gamma, slope, centre))
    x = images.float().clamp(0, 1) ** gamma
    start, end = torch.sigmoid(-slope * centre), torch.sigmoid(slope * (1 - centre))
    raised = (torch.sigmoid(slope * (x - centre)) - start) / (end - start)
    lowered = centre + torch.logit(start + x * (end - start)) / slope
    curve = torch.where(lower.to(images.device).view(-1, 1, 1, 1), lowered, raised).clamp(0, 1)
    curve = torch.where(images >= 1, 1.0, curve)  # the ends by construction, exact despite rounding
    return torch.where(images > 0, curve, 0.0).to(images.dtype)


class StyleAugment:
    """The pixel style augmentations of ``cfg`` (``histmatch``, then ``tone``) on a training batch.

    ``images``: float (N, 1, S, S) in [0, 1] (the network's input, e.g. after :class:`BatchAugment`);
    ``source_ids``: (N,) integers, one per source collection; ``generator`` draws every random choice. Returns the
    same shape, dtype and range (the input itself when ``cfg`` has no pixel kind). ``histmatch`` leaves a batch of
    one source unchanged (there is no other scanner to borrow from).
    """

    def __init__(self, cfg: StyleConfig):
        self.cfg = cfg

    def __call__(self, images: torch.Tensor, source_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected a batch (N, 1, S, S), got shape {tuple(images.shape)}")
        if source_ids.shape != images.shape[:1]:
            raise ValueError(f"expected one source id per image, got {tuple(source_ids.shape)} for {len(images)}")
        n, out = images.shape[0], images
        if "histmatch" in self.cfg.kinds:
            reference, has_other = other_source_partners(source_ids, generator)
            selected = (torch.rand(n, generator=generator, device=generator.device) < self.cfg.p) & has_other
            if selected.any():
                out = match_histograms(out, reference.to(images.device), selected)
        if "tone" in self.cfg.kinds:
            selected = torch.rand(n, generator=generator, device=generator.device) < self.cfg.p
            gamma = torch.exp(uniform(n, -math.log(MAX_TONE_GAMMA), math.log(MAX_TONE_GAMMA), generator))
            slope, centre = uniform(n, *TONE_SLOPE, generator), uniform(n, *TONE_CENTRE, generator)
            lower = torch.rand(n, generator=generator, device=generator.device) < 0.5
            if selected.any():
                curved = tone_curve(out, gamma, slope, centre, lower)
                out = torch.where(selected.to(images.device).view(-1, 1, 1, 1), curved, out)
        return out


@dataclass(frozen=True)
class MixPlan:
    """MixStyle's random choices for one batch: whether it mixes (never when it holds one source only), each
    sample's partner of another source, and the weight (L, N) of the sample's own statistics at each of the L
    hooked blocks."""

    active: bool
    partner: torch.Tensor
    weights: torch.Tensor


def mix_styles(features: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MixStyle on (N, C, H, W): each sample normalised by its own channel mean/std, then given ``weight`` (N,) x its
    own plus (1 - weight) x its ``partner``'s statistics (the statistics carry no gradient, as in the paper)."""
    device = features.device
    x = features.float()
    mean = x.mean(dim=(2, 3), keepdim=True).detach()
    std = (x.var(dim=(2, 3), keepdim=True, unbiased=False) + MIXSTYLE_EPS).sqrt().detach()
    partner, weight = partner.to(device), weight.to(device=device, dtype=torch.float32).view(-1, 1, 1, 1)
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    return ((x - mean) / std * mixed_std + mixed_mean).to(features.dtype)


class MixStyleHandle:
    """MixStyle hooked onto some blocks of a backbone. Call :meth:`set_domains` with the batch's source ids before
    each training forward (the choices it draws hold until the next call); :meth:`remove` unhooks it.

    Identity when the hooked block is in eval mode, when no domains were set, when the batch was drawn not to mix
    (probability ``1 - mixstyle_p``), and for a batch holding one source only (no other style to borrow).
    """

    def __init__(self, blocks: list[nn.Module], cfg: StyleConfig, generator: torch.Generator):
        self.blocks = blocks
        self.cfg = cfg
        self.generator = generator
        self.plan: MixPlan | None = None
        self._hooks = [block.register_forward_hook(self._hook(index)) for index, block in enumerate(blocks)]

    def set_domains(self, source_ids: torch.Tensor) -> None:
        """Draw the next batch's MixStyle choices for samples of these sources ((N,) integers); nothing once
        removed."""
        if not self.blocks:
            return
        gen = self.generator
        partner, has_partner = other_source_partners(source_ids, gen)
        # Within a batch, either every sample has a partner of another source or none has (one source only).
        drawn = bool(torch.rand((), generator=gen, device=gen.device) < self.cfg.mixstyle_p)
        active = drawn and bool(has_partner.all())
        # torch draws no Beta from a given generator: numpy's, seeded from it (float64: Beta(0.1, 0.1) is often
        # within 1e-30 of 0 or 1).
        seed = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
        alpha = self.cfg.mixstyle_alpha
        weights = np.random.default_rng(seed).beta(alpha, alpha, size=(len(self.blocks), len(partner)))
        self.plan = MixPlan(active, partner, torch.from_numpy(weights).float())

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self.blocks, self.plan = [], [], None

    def _hook(self, index: int):
        def mix(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            plan = self.plan
            if not module.training or plan is None or not plan.active:
                return None
            if output.shape[0] != len(plan.partner):
                raise ValueError(f"MixStyle: batch of {output.shape[0]} after set_domains with {len(plan.partner)} ids")
            return mix_styles(output, plan.partner, plan.weights[index])

        return mix


def insert_mixstyle(backbone: nn.Module, cfg: StyleConfig, generator: torch.Generator | None = None) -> MixStyleHandle:
    """Hook MixStyle after the :func:`early_blocks` of ``backbone`` when ``cfg`` asks for it (else a handle that
    does nothing). ``generator`` (default: a CPU generator seeded 0) draws every MixStyle choice. The model's
    class, parameters and state dict are unchanged."""
    generator = generator or torch.Generator().manual_seed(0)
    blocks = early_blocks(backbone) if cfg.has_mixstyle else []
    return MixStyleHandle(blocks, cfg, generator)


def early_blocks(backbone: nn.Module, strides: tuple[int, ...] = MIXSTYLE_STRIDES) -> list[nn.Module]:
    """The last block of the backbone's stages at each output stride in ``strides``, found by structure: the
    blocks are the children of the first ``nn.Sequential``/``nn.ModuleList`` of at least four modules (EfficientNet's
    ``_blocks``, DenseNet's ``features``), their strides measured on one forward pass of a small blank image.
    EfficientNet-Lite0: blocks 2, 4 and 10 (24, 40 and 112 channels)."""
    container = next(
        (m for m in backbone.modules() if isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m) >= 4), None
    )
    if container is None:
        raise ConfigError(f"MixStyle: no sequence of blocks found in {type(backbone).__name__}")
    children = list(container.children())
    block_strides = _output_strides(backbone, children)
    chosen = [
        children[max(i for i, s in block_strides.items() if s == stride)]
        for stride in strides
        if stride in block_strides.values()
    ]
    if not chosen:
        raise ConfigError(f"MixStyle: no block of {type(backbone).__name__} has an output stride in {strides}")
    return chosen


def _output_strides(backbone: nn.Module, children: list[nn.Module]) -> dict[int, int]:
    """{child index: input side / its output side} on one eval-mode forward of a blank (1, 1, 64, 64) image; the
    training flags of every module are restored afterwards."""
    strides: dict[int, int] = {}

    def record(index: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                strides[index] = round(_PROBE_SIDE / output.shape[-1])

        return hook

    modes = {module: module.training for module in backbone.modules()}
    hooks = [child.register_forward_hook(record(index)) for index, child in enumerate(children)]
    parameter = next(backbone.parameters(), None)
    probe = torch.zeros(1, 1, _PROBE_SIDE, _PROBE_SIDE)
    if parameter is not None:
        probe = probe.to(device=parameter.device, dtype=parameter.dtype)
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(probe)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    return strides
