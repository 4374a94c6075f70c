"""Grad-CAM through a :class:`~cxrscreen.inference.predictor.Predictor`, on exactly the input it scores.

From the backend's maps when it gives them (:mod:`cxrscreen.explain.analytic`: the same forward pass that scores,
no gradients, and for the ONNX backend no torch), else by autograd on the torch network
(:class:`~cxrscreen.explain.gradcam.GradCam`: architectures without a stated slope, ``.onnx`` files exported before
the graph had maps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cxrscreen.data.imageio import ImageSource, load_xray
from cxrscreen.data.transforms import Prepared
from cxrscreen.inference.backends import softmax
from cxrscreen.inference.options import check_target
from cxrscreen.inference.preparation import source_name
from cxrscreen.inference.results import Explanation, Prediction

if TYPE_CHECKING:
    from cxrscreen.inference.predictor import Predictor


def explain(predictor: Predictor, source: ImageSource, target: str | None, name: str | None, overlay: bool) -> Explanation:
    """:meth:`Predictor.explain`: Grad-CAM of ``target`` (None: the class predict decides) for one image."""
    check_target(target, predictor.classes)
    original = load_xray(source, source_name(source, name))
    with predictor.single_threaded():
        prepared = predictor.prepare_input(original)
        heatmap, target = input_heatmap(predictor, prepared, target)
    return explanation(original, prepared, heatmap, target, overlay)


def predict_and_explain(predictor: Predictor, source: ImageSource, name: str | None,
                        overlay: bool) -> tuple[Prediction, Explanation]:
    """:meth:`Predictor.predict_and_explain`: the prediction and the Grad-CAM of the class it decides (the OOD
    guard aside), from one preparation and, where the backend gives maps, one forward pass."""
    label = source_name(source, name)
    original = load_xray(source, label)
    with predictor.single_threaded():
        batch = predictor.prepare_sources([original], [label])
        if batch.failures:
            raise batch.failures[0]
        prepared = batch.prepared[0]
        if predictor.backend.explains:
            outputs, maps = predictor.net_outputs(batch.inputs, batch.thumbnails, maps=True)
            prediction = predictor.score_batch([label], batch, outputs)[0]
            target = predictor.decided_class(prediction)
            heatmap = normalized_map(maps, predictor.classes.index(target))
        else:
            prediction = predictor.score_batch([label], batch)[0]
            heatmap, target = input_heatmap(predictor, prepared, predictor.decided_class(prediction))
    return prediction, explanation(original, prepared, heatmap, target, overlay)


def input_heatmap(predictor: Predictor, prepared: Prepared, target: str | None) -> tuple[np.ndarray, str]:
    """(Grad-CAM of ``target`` on the network input, (S, S) in [0, 1]; the target, decided when None)."""
    batch = prepared.input[None, None]
    if predictor.backend.explains:
        logits, _, maps = predictor.backend.run_with_maps(batch)
        if target is None:
            target = predictor.decide(softmax(logits, predictor.meta.temperature)[0])
        return normalized_map(maps, predictor.classes.index(target)), target
    import torch

    from cxrscreen.explain.gradcam import GradCam

    if target is None:
        target = predictor.decide(predictor.predict_prepared(prepared.input[None]).probs[0])
    heatmaps, _ = GradCam(predictor.torch_model)(torch.from_numpy(prepared.input)[None, None], predictor.classes.index(target))
    return heatmaps[0], target


def normalized_map(maps: np.ndarray, class_index: int) -> np.ndarray:
    """The first image's map of ``class_index`` from maps (N, C, S, S), scaled to [0, 1]."""
    low, high = float(maps[0, class_index].min()), float(maps[0, class_index].max())
    if high <= low:
        return np.zeros(maps.shape[-2:], dtype=np.float32)
    return ((maps[0, class_index] - low) / (high - low)).astype(np.float32)


def explanation(original: np.ndarray, prepared: Prepared, heatmap: np.ndarray, target: str, overlay: bool) -> Explanation:
    """The :class:`Explanation` of a map on the network input: carried back into the image's frame."""
    from cxrscreen.explain.overlay import overlay_png  # PNG encoding: only for an explanation (start-up time)

    full = np.clip(prepared.to_original(heatmap), 0.0, 1.0)
    return Explanation(heatmap=full, overlay_png=overlay_png(original, full) if overlay else b"", target=target,
                       prepared=prepared)
