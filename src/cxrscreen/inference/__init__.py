"""Inference: torch and ONNX Runtime predictors, ONNX export."""

from cxrscreen.inference.predictor import load_predictor, parse_thresholds

__all__ = ["load_predictor", "parse_thresholds"]
