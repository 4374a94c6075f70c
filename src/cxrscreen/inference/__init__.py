"""Inference: torch and ONNX Runtime predictors, ONNX export."""
