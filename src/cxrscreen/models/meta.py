"""What a trained classifier is, besides its weights: :class:`ModelMeta`.

Torch-free, so that a model's description can be read (from its ONNX cache) without loading torch; the checkpoint
file that carries it is :mod:`cxrscreen.models.checkpoint`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cxrscreen.data.labels import LabelSet
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.models.class_codes import ClassCode, class_code


@dataclass
class ModelMeta:
    """Everything needed to use a trained classifier, besides its weights."""

    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    label_map: dict[str, str] = field(default_factory=dict)
    name: str = "cxrscreen-model"
    version: str = "0"
    temperature: float = 1.0
    train_summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, Any] = field(default_factory=dict)
    train_hashes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    # Decision thresholds {class: probability} of the model's operating point (see
    # cxrscreen.inference.predictor.decide); empty = the most probable class.
    thresholds: dict[str, float] = field(default_factory=dict)
    # Kinds of images the model is known to get wrong, one plain sentence each, shown with every prediction.
    known_limits: list[str] = field(default_factory=list)
    # {class: {"value", "scheme", "meaning"}}: the coded concept of each class in results written as codes (the
    # DICOM SR); a class left out gets its standard code (see class_code).
    class_codes: dict[str, dict[str, str]] = field(default_factory=dict)
    # What the model does on its own validation images (cxrscreen.metrics.reference.OutputReference.to_dict):
    # the yardstick `cxrscreen monitor` and the servers hold their recent images against. Empty = none stored.
    reference: dict[str, Any] = field(default_factory=dict)

    def class_code(self, name: str) -> ClassCode:
        """The coded concept of class ``name`` (:func:`cxrscreen.models.class_codes.class_code`)."""
        return class_code(name, self.class_codes)

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(tuple(self.classes), dict(self.label_map))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMeta":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
        return cls(**values)
