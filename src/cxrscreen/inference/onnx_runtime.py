"""The classifier in ONNX Runtime, without torch: a checkpoint's cached ONNX bundle, and the backend that runs it.

A checkpoint is prepared for ONNX Runtime once (:mod:`cxrscreen.inference.onnx_export`, which imports torch) into a
folder of :func:`cxrscreen.models.onnx.cache_dir` named after the file's content and the exporting torch release::

    <content hash of the .pt>-opset17-torch2.13.0-layout2/
        model.onnx   the graph: image (N, 1, S, S) in [0, 1] -> logits (N, C), features (N, F), maps (N, C, S, S)
                     where the architecture allows (Grad-CAM, explain.analytic); ModelMeta inside too
        meta.json    {"meta": ModelMeta without the OOD guard's matrices, "guard_graph": the guard network's export}
        guard.npz    the OOD guard's matrices (``meta.ood``'s lists, as arrays)

The folder is written whole or not at all (renamed into place). Later loads hash the checkpoint's bytes (about 20 ms
for 15 MB), read the folder and start ONNX Runtime sessions: no torch, no ``onnx`` package.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrscreen.hashing import file_hash
from cxrscreen.errors import ConfigError, ModelError
from cxrscreen.models.meta import ModelMeta
from cxrscreen.models.onnx import INPUT_NAME, OPSET, cache_dir, cpu_session, preferred_cache_dir, session_metadata, torch_tag

META_KEY = "cxrscreen_meta"
OUTPUT_NAMES = ("logits", "features")
MAPS_OUTPUT = "maps"  # every class's Grad-CAM map (N, C, S, S), where the architecture allows (explain.analytic)
BUNDLE_LAYOUT = 2  # 2: the graph has MAPS_OUTPUT; bundles of older layouts are prepared again
OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
GRAPH_FILE = "model.onnx"
META_FILE = "meta.json"
GUARD_FILE = "guard.npz"


@dataclass(frozen=True)
class OnnxModel:
    """What ONNX Runtime prediction needs of a checkpoint: its ``graph`` file, its :class:`ModelMeta` (the guard's
    matrices as arrays) and the OOD guard network's export (None when the guard does not read the whole image)."""

    graph: Path
    meta: ModelMeta
    guard_graph: Path | None


def bundle_folder(checkpoint: Path) -> Path:
    """The cache folder of a checkpoint's ONNX bundle, keyed by the file's bytes and the exporting torch release."""
    return cache_dir() / f"{file_hash(checkpoint)}-opset{OPSET}-torch{torch_tag()}-layout{BUNDLE_LAYOUT}"


def split_guard(ood: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``meta.ood`` -> (its plain entries, its matrices as arrays): every list is a matrix or vector of numbers."""
    arrays = {key: np.asarray(value) for key, value in ood.items() if isinstance(value, (list, np.ndarray))}
    return {key: value for key, value in ood.items() if key not in arrays}, arrays


def read_bundle(folder: Path) -> OnnxModel | None:
    """The bundle in ``folder``, or None when it is missing or incomplete (then it is prepared again)."""
    try:
        manifest = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        with np.load(folder / GUARD_FILE) as arrays:
            matrices = {key: arrays[key] for key in arrays.files}
        meta = ModelMeta.from_dict({**manifest["meta"], "ood": {**manifest["meta"]["ood"], **matrices}})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The guard network's export lies in the same cache folder as the bundle.
    guard_graph = folder.parent / manifest["guard_graph"] if manifest.get("guard_graph") else None
    if not (folder / GRAPH_FILE).is_file() or (guard_graph is not None and not guard_graph.is_file()):
        return None
    return OnnxModel(folder / GRAPH_FILE, meta, guard_graph)


def prepared_for_onnx(checkpoint: Path) -> OnnxModel:
    """The checkpoint's ONNX bundle (see the module's docstring), prepared on first use: that once, torch is
    imported, the graph exported and one line said on stderr. When the cache cannot be written, the bundle is
    prepared in :func:`~cxrscreen.models.onnx.fallback_cache_dir`, where later runs find it."""
    folder = bundle_folder(checkpoint)
    preferred = preferred_cache_dir() / folder.name
    for candidate in dict.fromkeys((preferred, folder)):  # a read-only cache may hold it already
        found = read_bundle(candidate)
        if found is not None:
            return found
    from cxrscreen.inference.onnx_export import write_bundle  # torch and the exporter: only on a cache miss

    print(f"cxrscreen: preparing {checkpoint.name} for ONNX Runtime once (exporting its graph) ...",
          file=sys.stderr, flush=True)
    write_bundle(checkpoint, folder)
    unwritable = "" if folder == preferred else f" ({preferred.parent} cannot be written)"
    print(f"cxrscreen: cached in {folder}{unwritable}", file=sys.stderr, flush=True)
    found = read_bundle(folder)
    if found is None:
        raise ModelError(f"{folder}: the ONNX bundle just written cannot be read back")
    return found


def meta_from_metadata(props: dict[str, str], path: str | os.PathLike) -> ModelMeta:
    """The :class:`ModelMeta` an export stored in its ``metadata_props`` (:class:`ModelError` if there is none)."""
    if META_KEY not in props:
        raise ModelError(f"{path}: ONNX model has no cxrscreen metadata (export it with `cxrscreen export`)")
    return ModelMeta.from_dict(json.loads(props[META_KEY]))


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
        self.path = Path(path)
        try:
            self.session = cpu_session(path, threads, level)
        except Exception as exc:  # onnxruntime raises its own exception types for unusable files
            raise ModelError(f"{path}: ONNX Runtime cannot load the model ({type(exc).__name__})") from exc

    @property
    def meta(self) -> ModelMeta:
        """The :class:`ModelMeta` stored in the model file (:class:`ModelError` if it is not a cxrscreen export)."""
        return meta_from_metadata(session_metadata(self.session), self.path)

    @property
    def explains(self) -> bool:
        """Whether the graph gives Grad-CAM maps (exports of architectures that allow it, since layout 2)."""
        return MAPS_OUTPUT in {output.name for output in self.session.get_outputs()}

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits, features

    def run_with_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, features, maps = self.session.run([*OUTPUT_NAMES, MAPS_OUTPUT],
                                                  {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits, features, maps


def read_onnx_meta(path: str | os.PathLike) -> ModelMeta:
    """The :class:`ModelMeta` stored in an exported file (:class:`ModelError` if it is not a cxrscreen export),
    read without starting ONNX Runtime."""
    import onnx  # only to read a file's metadata outside prediction (export, tests): 1 s of imports

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a foreign or corrupt file
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    return meta_from_metadata({p.key: p.value for p in proto.metadata_props}, path)
