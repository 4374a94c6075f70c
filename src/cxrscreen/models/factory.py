"""Building a classifier by name (as timm's ``create_model``), and the registered architectures.

The model modules register themselves with :func:`cxrscreen.models.registry.register_model` when imported; this
module imports every built-in one, so that asking it for an architecture finds them all (timm's ``models`` package
does the same). The registry itself imports no model.
"""

from __future__ import annotations

from cxrscreen.errors import ConfigError
from cxrscreen.models import efficientnet_lite, monai_nets  # noqa: F401 - importing them registers their architectures
from cxrscreen.models.registry import ModelSpec, XrayClassifier, registered


def list_models() -> list[ModelSpec]:
    """Every registered architecture, by name."""
    return sorted(registered().values(), key=lambda s: s.name)


def get_spec(name: str) -> ModelSpec:
    """The registered architecture ``name``; a :class:`ConfigError` listing the others when there is none."""
    specs = registered()
    if name not in specs:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(specs))}")
    return specs[name]


def create_model(name: str, num_classes: int, pretrained: bool = True, dropout: float = 0.2) -> XrayClassifier:
    """Build a registered classifier. ``pretrained`` loads ImageNet weights where the architecture has them."""
    spec = get_spec(name)
    backbone = spec.builder(num_classes, pretrained and spec.has_pretrained)
    return XrayClassifier(backbone, num_classes, spec.mean, spec.std, dropout)
