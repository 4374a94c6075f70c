"""ONNX export and ONNX Runtime sessions shared by every network cxrscreen exports (classifier, guard, segmenter).

Exported graphs take ``image`` float32 (N, 1, S, S) with a free batch size. Files exported on first use are kept in
:func:`cache_dir`, keyed by what they were made from. Importing this module loads neither torch nor ONNX Runtime:
running a cached graph needs no torch, and torch is imported only to export one (:func:`traced_onnx`).
"""

from __future__ import annotations

import atexit
import functools
import importlib.metadata
import io
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrscreen.data.cache import cache_root

if TYPE_CHECKING:
    import torch
    from torch import nn

OPSET = 17
INPUT_NAME = "image"


def torch_tag() -> str:
    """The installed torch release, which makes the exports, for cache file names (``2.13.0``); read from the
    package's metadata, so that finding a cached export does not import torch."""
    try:
        return importlib.metadata.version("torch").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return "none"


def cache_dir() -> Path:
    """Where networks exported on first use are kept: ``onnx/`` in :func:`cxrscreen.data.cache.cache_root`, or,
    when that cannot be written, :func:`fallback_cache_dir` (else every run would export them again)."""
    return writable_or_fallback(preferred_cache_dir())


def preferred_cache_dir() -> Path:
    """``onnx/`` in :func:`cxrscreen.data.cache.cache_root`, writable or not (what :func:`cache_dir` tries first)."""
    return cache_root() / "onnx"


@functools.lru_cache(maxsize=4)
def writable_or_fallback(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return fallback_cache_dir()


def fallback_cache_dir() -> Path:
    """Where exports go when the cache cannot be written: ``cxrscreen-cache-<uid>/onnx`` in the system's temporary
    folder, kept between runs so that the next one finds its exports instead of making them again.

    Only a folder private to this user (0700, its own, not a link) is used, never one another user could have
    filled: when the name is taken, a folder of this process's own is made instead, removed when the process ends."""
    root = Path(tempfile.gettempdir()) / f"cxrscreen-cache-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        status = root.lstat()
        if stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and not status.st_mode & 0o077:
            return root / "onnx"
    except OSError:
        pass
    private = tempfile.mkdtemp(prefix="cxrscreen-cache-")
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    return Path(private) / "onnx"


def traced_onnx(module: nn.Module, example: torch.Tensor, output_names: tuple[str, ...]) -> bytes:
    """``module`` (input ``image``, batch size free) as ONNX bytes, opset 17.

    The TorchScript exporter: deprecated since torch 2.9 but, for these networks, 7x faster to export than the
    torch.export-based one (3 s against 20 s) for the same ONNX Runtime speed; torch is pinned. Its notices about
    itself and about constant-folding Slice are expected and silenced.
    """
    import torch  # only to export (start-up time of everything that runs a cached graph)

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


def cpu_session(model: str | Path | bytes, threads: int | None, level: Any = None, disabled: tuple[str, ...] = ()) -> Any:
    """An ONNX Runtime CPU session over ``model`` (a path or the bytes of one); ``threads`` intra-op threads (None:
    ONNX Runtime's default), one inter-op thread; ``level`` an ``ort.GraphOptimizationLevel`` (None: all);
    ``disabled``: names of graph optimizers not to apply."""
    import onnxruntime as ort  # only where a network runs in ONNX Runtime (start-up time)

    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))


def session_metadata(session: Any) -> dict[str, str]:
    """The ``metadata_props`` of the model an ONNX Runtime session runs (read without the ``onnx`` package)."""
    return dict(session.get_modelmeta().custom_metadata_map)
