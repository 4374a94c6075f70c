"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for one class lies.

The class score's gradient with respect to a convolutional layer's activations, averaged over space, weights
that layer's channels; the ReLU of the weighted sum is the map. Written here (about 40 lines) rather than taken
from MONAI, whose default normaliser inverts the map and which only warns about a wrong layer name.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrscreen.errors import ModelError


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; a :class:`ModelError` naming it if the model has none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"{name}: the model has no layer of that name for Grad-CAM") from None


@contextmanager
def captured_outputs(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The outputs ``layer`` gives in this thread while the context lasts (a server shares one model between
    threads: another thread's forward pass is not captured)."""
    captured: list[torch.Tensor] = []
    caller = threading.get_ident()

    def capture(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if threading.get_ident() == caller:
            captured.append(output)

    handle = layer.register_forward_hook(capture)
    try:
        yield captured
    finally:
        handle.remove()


def normalize_map(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map of (N, H, W) to [0, 1] (min -> 0, max -> 1); an all-flat map becomes all zeros."""
    flat = cam.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = (flat.max(dim=1).values[:, None, None] - low)
    return torch.where(span > 0, (cam - low) / span.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))


class GradCam:
    """Grad-CAM on ``model`` at ``target_layer`` (default: the model's own ``target_layer`` attribute).

    Calling it with inputs (N, 1, H, W) in [0, 1] (on any device: they are moved to the model's) and a class
    index (one int for all, one per image, or None for each image's top class) returns (heatmaps float32
    (N, H, W) in [0, 1], logits float32 (N, C)), as numpy arrays.
    """

    def __init__(self, model: nn.Module, target_layer: str | None = None):
        self.model = model
        self.layer_name = target_layer or getattr(model, "target_layer", None)
        if not self.layer_name:
            raise ModelError(f"{type(model).__name__}: no target layer for Grad-CAM")
        self.layer = find_layer(model, self.layer_name)

    def __call__(
        self, x: torch.Tensor, class_index: int | list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        was_training = self.model.training
        self.model.eval()
        try:
            with captured_outputs(self.layer) as captured, torch.enable_grad(), torch.inference_mode(False):
                device = next(self.model.parameters()).device
                inputs = x.detach().to(device).float().clone().requires_grad_(True)
                logits = self.model(inputs)
                if not captured:
                    raise ModelError(f"{self.layer_name}: layer did not run in the forward pass")
                activations = captured[-1]
                targets = self._targets(logits, class_index).to(device)
                score = logits.gather(1, targets[:, None]).sum()
                (gradients,) = torch.autograd.grad(score, activations)
        finally:
            self.model.train(was_training)
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return normalize_map(cam.detach()).float().cpu().numpy(), logits.detach().float().cpu().numpy()

    @staticmethod
    def _targets(logits: torch.Tensor, class_index: int | list[int] | None) -> torch.Tensor:
        n, num_classes = logits.shape
        if class_index is None:
            return logits.argmax(dim=1)
        indices = [class_index] * n if isinstance(class_index, int) else list(class_index)
        if len(indices) != n or any(not 0 <= i < num_classes for i in indices):
            raise ModelError(f"class_index: {class_index!r} does not fit {n} images of {num_classes} classes")
        return torch.tensor(indices, dtype=torch.long)
