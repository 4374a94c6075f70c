"""Export a checkpoint to ONNX and run it with ONNX Runtime.

The exported graph takes ``image`` float32 (N, 1, S, S) in [0, 1] (batch size free) and returns ``logits``
(N, C) and ``features`` (N, F), the penultimate features the out-of-distribution guard needs. The model's
:class:`ModelMeta` is stored as JSON in the file's ``metadata_props`` (key ``cxrscreen_meta``), so an ``.onnx``
file is self-describing. Temperature scaling and softmax stay outside the graph, shared with the torch path.

The generic pieces (the exporter call, the cache folder, ONNX Runtime sessions) are in :mod:`cxrscreen.models.onnx`;
the OOD guard's network in ONNX Runtime is in :mod:`cxrscreen.guard.onnx`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrscreen.errors import ConfigError, ModelError
from cxrscreen.io_utils import atomic_write
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint
from cxrscreen.models.onnx import INPUT_NAME, OPSET, cache_dir, cpu_session, torch_tag, traced_onnx
from cxrscreen.models.registry import XrayClassifier

META_KEY = "cxrscreen_meta"
OUTPUT_NAMES = ("logits", "features")
OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")


class LogitsAndFeatures(nn.Module):
    """The classifier with both outputs the predictor needs: (logits (N, C), features (N, F))."""

    def __init__(self, model: XrayClassifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(x)
        return self.model.head(features), features


def export_onnx(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the checkpoint's network as ONNX (opset 17, dynamic batch) with its metadata; returns ``out_path``."""
    import onnx

    model, meta = load_checkpoint(checkpoint_path)
    size = meta.preprocessing.img_size
    proto = onnx.load_from_string(traced_onnx(LogitsAndFeatures(model), torch.rand(2, 1, size, size), OUTPUT_NAMES))
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta.to_dict())})
    proto.doc_string = f"cxrscreen {meta.name} v{meta.version} ({meta.arch}); classes: {', '.join(meta.classes)}"
    with atomic_write(out_path, "wb") as fh:
        fh.write(proto.SerializeToString())
    return Path(out_path)


def read_onnx_meta(path: str | os.PathLike) -> ModelMeta:
    """The :class:`ModelMeta` stored in an exported file (:class:`ModelError` if it is not a cxrscreen export)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a foreign or corrupt file
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise ModelError(f"{path}: ONNX model has no cxrscreen metadata (export it with `cxrscreen export`)")
    return ModelMeta.from_dict(json.loads(props[META_KEY]))


def cached_onnx_export(checkpoint_path: str | os.PathLike) -> Path:
    """The ONNX export of a checkpoint, made once and kept under :func:`cache_dir`, keyed by the file's content."""
    digest = hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest()[:24]
    target = cache_dir() / f"{digest}-opset{OPSET}-torch{torch_tag()}.onnx"
    if not target.is_file():
        export_onnx(checkpoint_path, target)
    return target


class OnnxRuntimeBackend:
    """ONNX Runtime CPU session over an exported model: float32 (N, 1, S, S) -> (logits (N, C), features (N, F))."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, optimization: str = "all"):
        import onnxruntime as ort  # only where a model runs in ONNX Runtime (start-up time)

        if optimization not in OPTIMIZATION_LEVELS:
            raise ConfigError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
        level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        try:
            self.session = cpu_session(path, threads, level)
        except Exception as exc:  # onnxruntime raises its own exception types for unusable files
            raise ModelError(f"{path}: ONNX Runtime cannot load the model ({type(exc).__name__})") from exc

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits, features
