"""Export a checkpoint to ONNX and run it with ONNX Runtime.

The exported graph takes ``image`` float32 (N, 1, S, S) in [0, 1] (batch size free) and returns ``logits``
(N, C) and ``features`` (N, F), the penultimate features the out-of-distribution guard needs. The model's
:class:`ModelMeta` is stored as JSON in the file's ``metadata_props`` (key ``cxrscreen_meta``), so an ``.onnx``
file is self-describing. Temperature scaling and softmax stay outside the graph, shared with the torch path.

The out-of-distribution guard's network (:class:`cxrscreen.guard.network.GuardNet`, the same for every model)
is exported once into the cache too (:func:`cached_guard_export`) and run by :class:`OnnxGuardRunner`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrscreen.data.cache import cache_root
from cxrscreen.errors import ConfigError, ModelError
from cxrscreen.io_utils import atomic_write
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint
from cxrscreen.models.registry import XrayClassifier

OPSET = 17
META_KEY = "cxrscreen_meta"
INPUT_NAME = "image"
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


def traced_onnx(module: nn.Module, example: torch.Tensor, output_names: tuple[str, ...]) -> bytes:
    """``module`` (input ``image``, batch size free) as ONNX bytes, opset 17.

    The TorchScript exporter: deprecated since torch 2.9 but, for these networks, 7x faster to export than the
    torch.export-based one (3 s against 20 s) for the same ONNX Runtime speed; torch is pinned. Its notices about
    itself and about constant-folding Slice are expected and silenced.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            module.eval(),
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


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


def cache_dir() -> Path:
    """Where checkpoints exported on first use are kept: ``onnx/`` in :func:`cxrscreen.data.cache.cache_root`."""
    return cache_root() / "onnx"


def cached_onnx_export(checkpoint_path: str | os.PathLike) -> Path:
    """The ONNX export of a checkpoint, made once and kept under :func:`cache_dir`, keyed by the file's content."""
    digest = hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest()[:24]
    target = cache_dir() / f"{digest}-opset{OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    if not target.is_file():
        export_onnx(checkpoint_path, target)
    return target


class OnnxRuntimeBackend:
    """ONNX Runtime CPU session over an exported model: float32 (N, 1, S, S) -> (logits (N, C), features (N, F))."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, optimization: str = "all"):
        import onnxruntime as ort

        if optimization not in OPTIMIZATION_LEVELS:
            raise ConfigError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unusable files
            raise ModelError(f"{path}: ONNX Runtime cannot load the model ({type(exc).__name__})") from exc

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits, features


def cached_guard_export() -> Path:
    """The out-of-distribution guard's network as ONNX (``image`` (N, 1, 64, 64) -> ``guard_features`` (N, 1536)),
    exported once into :func:`cache_dir`, keyed by its weights' checksum."""
    from cxrscreen.models.efficientnet_lite import WEIGHT_SHA256
    from cxrscreen.guard.inputs import GUARD_SIZE
    from cxrscreen.guard.network import guard_net

    digest = WEIGHT_SHA256["efficientnet-lite0"][:16]
    target = cache_dir() / f"guard-{digest}-taps-opset{OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    if not target.is_file():
        data = traced_onnx(guard_net(), torch.rand(2, 1, GUARD_SIZE, GUARD_SIZE), ("guard_features",))
        with atomic_write(target, "wb") as fh:
            fh.write(data)
    return target


class OnnxGuardRunner:
    """The guard's network in ONNX Runtime: inputs (N, 64, 64) float32 in [0, 1] -> guard features (N, 1536)."""

    def __init__(self, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread unless told otherwise: under a millisecond per image, a thread pool costs more than it gives
        # (and spins beside the classifier's own pool in a busy server).
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(cached_guard_export()), options, providers=["CPUExecutionProvider"])

    def __call__(self, thumbnails: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(thumbnails, dtype=np.float32)[:, None]
        return self.session.run(["guard_features"], {INPUT_NAME: batch})[0]
