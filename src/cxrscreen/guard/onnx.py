"""The guard's network in ONNX Runtime: exported once into the cache, run single-threaded.

Running a cached export loads no torch; torch and the guard's network are imported only to export it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrscreen.guard.inputs import GUARD_SIZE
from cxrscreen.io_utils import atomic_write
from cxrscreen.models.onnx import INPUT_NAME, OPSET, cache_dir, cpu_session, torch_tag, traced_onnx


def cached_guard_export() -> Path:
    """The out-of-distribution guard's network as ONNX (``image`` (N, 1, 64, 64) -> ``guard_features`` (N, 1536)),
    exported once into :func:`cxrscreen.models.onnx.cache_dir`, keyed by its weights' checksum."""
    import torch  # the checksum's module and the exporter load torch: only here, never to run a cached graph

    from cxrscreen.guard.network import guard_net
    from cxrscreen.models.efficientnet_lite import WEIGHT_SHA256

    digest = WEIGHT_SHA256["efficientnet-lite0"][:16]
    target = cache_dir() / f"guard-{digest}-taps-opset{OPSET}-torch{torch_tag()}.onnx"
    if not target.is_file():
        data = traced_onnx(guard_net(), torch.rand(2, 1, GUARD_SIZE, GUARD_SIZE), ("guard_features",))
        with atomic_write(target, "wb") as fh:
            fh.write(data)
    return target


class OnnxGuardRunner:
    """The guard's network in ONNX Runtime: inputs (N, 64, 64) float32 in [0, 1] -> guard features (N, 1536).

    ``graph``: the exported network (None: :func:`cached_guard_export`, which imports torch to find or make it)."""

    def __init__(self, threads: int | None = None, graph: Path | None = None):
        # One thread unless told otherwise: under a millisecond per image, a thread pool costs more than it gives
        # (and spins beside the classifier's own pool in a busy server).
        self.session = cpu_session(graph or cached_guard_export(), threads or 1)

    def __call__(self, thumbnails: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(thumbnails, dtype=np.float32)[:, None]
        return self.session.run(["guard_features"], {INPUT_NAME: batch})[0]
