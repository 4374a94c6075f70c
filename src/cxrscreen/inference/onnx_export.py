"""Export a checkpoint to ONNX: a self-describing ``.onnx`` file, or the cached bundle ONNX Runtime predicts from.

The exported graph takes ``image`` float32 (N, 1, S, S) in [0, 1] (batch size free) and returns ``logits``
(N, C), ``features`` (N, F), the penultimate features the out-of-distribution guard needs, and, where the
architecture allows, ``maps`` (N, C, S, S): every class's Grad-CAM map (:mod:`cxrscreen.explain.analytic`). The model's
:class:`ModelMeta` is stored as JSON in the file's ``metadata_props`` (key ``cxrscreen_meta``), so an ``.onnx``
file is self-describing. Temperature scaling and softmax stay outside the graph, shared with the torch path.

This module imports torch; running an export does not (:mod:`cxrscreen.inference.onnx_runtime`, which also defines
the bundle's layout). The generic pieces (the exporter call, the cache folder, ONNX Runtime sessions) are in
:mod:`cxrscreen.models.onnx`; the OOD guard's network in ONNX Runtime is in :mod:`cxrscreen.guard.onnx`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrscreen.guard.onnx import cached_guard_export
from cxrscreen.guard.ppca import reads_whole_image
from cxrscreen.explain.analytic import ScoresAndMaps, explains_analytically
from cxrscreen.inference.onnx_runtime import GRAPH_FILE, GUARD_FILE, MAPS_OUTPUT, META_FILE, META_KEY, OUTPUT_NAMES, split_guard
from cxrscreen.io_utils import atomic_write
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint
from cxrscreen.models.onnx import cache_dir, traced_onnx
from cxrscreen.models.registry import XrayClassifier


class LogitsAndFeatures(nn.Module):
    """The classifier with both outputs the predictor needs: (logits (N, C), features (N, F))."""

    def __init__(self, model: XrayClassifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(x)
        return self.model.head(features), features


def onnx_bytes(model: XrayClassifier, meta: ModelMeta) -> bytes:
    """The classifier as ONNX (opset 17, dynamic batch), its :class:`ModelMeta` in the metadata."""
    import onnx

    size = meta.preprocessing.img_size
    if explains_analytically(model):
        graph = traced_onnx(ScoresAndMaps(model), torch.rand(2, 1, size, size), (*OUTPUT_NAMES, MAPS_OUTPUT))
    else:
        graph = traced_onnx(LogitsAndFeatures(model), torch.rand(2, 1, size, size), OUTPUT_NAMES)
    proto = onnx.load_from_string(graph)
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta.to_dict())})
    proto.doc_string = f"cxrscreen {meta.name} v{meta.version} ({meta.arch}); classes: {', '.join(meta.classes)}"
    return proto.SerializeToString()


def export_onnx(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the checkpoint's network as ONNX (opset 17, dynamic batch) with its metadata; returns ``out_path``."""
    data = onnx_bytes(*load_checkpoint(checkpoint_path))
    with atomic_write(out_path, "wb") as fh:
        fh.write(data)
    return Path(out_path)


def guard_export() -> str | None:
    """The guard network's export, relative to the cache folder; None when the cache cannot be written (the
    predictor then finds its own way to run the guard)."""
    try:
        return str(cached_guard_export().relative_to(cache_dir()))
    except OSError:
        return None


def write_bundle(checkpoint_path: Path, folder: Path) -> None:
    """Prepare a checkpoint for ONNX Runtime into ``folder`` (the layout of :mod:`cxrscreen.inference.onnx_runtime`):
    written in a sibling temporary folder and renamed into place, so that a reader sees all of it or none. The
    guard network's export goes to :func:`cxrscreen.models.onnx.cache_dir`, shared by every model."""
    model, meta = load_checkpoint(checkpoint_path)
    guard_graph = guard_export() if reads_whole_image(meta.ood) else None
    plain, matrices = split_guard(meta.ood)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp (0700): the folder renamed into the cache gets the mode the user's umask gives, as its files do.
    staging = folder.parent / f".{folder.name}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        (staging / GRAPH_FILE).write_bytes(onnx_bytes(model, meta))
        np.savez(staging / GUARD_FILE, **matrices)
        manifest = {"meta": {**meta.to_dict(), "ood": plain}, "guard_graph": guard_graph}
        (staging / META_FILE).write_text(json.dumps(manifest), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete bundle (e.g. its guard export was deleted)
        os.replace(staging, folder)
    except OSError:
        if folder.is_dir() and (folder / META_FILE).is_file():
            return  # another process put the same bundle in place first
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
