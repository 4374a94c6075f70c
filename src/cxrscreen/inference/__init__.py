"""Inference: torch and ONNX Runtime predictors, ONNX export.

``load_predictor`` loads :mod:`cxrscreen.inference.predictor` (numpy, the image code) on first use, so that the
command line's parser, which reads :mod:`cxrscreen.inference.options`, imports none of it.
"""

from __future__ import annotations

from typing import Any

from cxrscreen.inference.options import parse_thresholds

__all__ = ["load_predictor", "parse_thresholds"]


def __getattr__(name: str) -> Any:
    if name == "load_predictor":
        from cxrscreen.inference.predictor import load_predictor

        return load_predictor
    raise AttributeError(f"module 'cxrscreen.inference' has no attribute {name!r}")
