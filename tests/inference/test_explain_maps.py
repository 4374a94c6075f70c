"""The bundled model's Grad-CAM from the graph's maps, in both engines: the same maps as autograd, and
predict_and_explain giving predict's prediction with explain's map of the decided class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrscreen.explain.gradcam import GradCam


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_the_bundled_model_explains_from_its_forward_pass(engine: str, bundled_predictors, real_xrays: list[Path]) -> None:
    predictor = bundled_predictors[engine]
    assert predictor.backend.explains  # the fast path, not the autograd fallback
    for path in real_xrays:
        prediction, explanation = predictor.predict_and_explain(path)
        assert prediction.probabilities == predictor.predict(path).probabilities
        assert explanation.target == predictor.decided_class(prediction)
        prepared = explanation.prepared
        autograd, _ = GradCam(predictor.torch_model)(torch.from_numpy(prepared.input)[None, None],
                                                     predictor.classes.index(explanation.target))
        expected = np.clip(prepared.to_original(autograd[0]), 0.0, 1.0)
        assert np.abs(explanation.heatmap - expected).max() < 1e-3 and explanation.heatmap.max() > 0.9
        assert explanation.overlay_png.startswith(b"\x89PNG")
        for target in predictor.classes:
            assert np.abs(predictor.explain(path, target=target, overlay=False).heatmap
                          - _autograd_map(predictor, prepared, target)).max() < 1e-3


def _autograd_map(predictor, prepared, target: str) -> np.ndarray:
    maps, _ = GradCam(predictor.torch_model)(torch.from_numpy(prepared.input)[None, None], predictor.classes.index(target))
    return np.clip(prepared.to_original(maps[0]), 0.0, 1.0)
