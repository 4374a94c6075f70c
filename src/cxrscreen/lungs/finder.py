"""The lung segmenter handed to preparation as a :class:`cxrscreen.data.transforms.LungFinder`: ``data`` never
imports the lungs, every caller that prepares lung-focused images (training, evaluation, the cache command) passes
:func:`segmenter_lungs` in.

The network runs in ONNX Runtime with one intra-op thread, as prediction runs it: one session, shared by the
cache's decode workers (a session may be run from several threads at once), so that workers x network threads =
CPUs. TorchScript runs it only when the ONNX export cannot be made or read. The two engines do not always give the
same prepared image: measured on 1,690 real X-rays (Radiography DB, Kermany, ieee8023, TB), their lung
probabilities differ by up to 1.5e-4, which moved the 0.5 threshold by one pixel on 4 masks and changed one
prepared image (Normal-1295: 520 pixels, up to 34 grey levels). So the finder's digest names the engine as well as
the weights: a cache built by one engine is never read by the other.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

from cxrscreen.data.cache import content_hash
from cxrscreen.data.transforms import LungFinder
from cxrscreen.errors import ModelError
from cxrscreen.lungs import segmenter

# Intra-op threads of the ONNX Runtime session: the cache's workers run side by side, one CPU each.
ONNX_THREADS = 1


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, mtime_ns: int, size: int) -> str:
    return content_hash(path.read_bytes())


def weights_digest(weights: Path) -> str:
    """Digest of a segmenter weight file (``missing`` when absent: preparing then fails anyway, once)."""
    if not weights.is_file():
        return "missing"
    stat = weights.stat()
    return _file_digest(weights, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _engine(path: Path, mtime_ns: int, size: int) -> str:
    try:
        if path.suffix != ".onnx":  # an .onnx file is its own export
            segmenter.exported_segmenter(path)
    except ModelError:
        return "onnx"  # the weight file itself is unusable: loading raises this error when a network is needed
    except Exception as exc:  # noqa: BLE001 - the exporter (torch, onnx) raises its own types
        return _fall_back(path, "cannot be made", exc)
    try:
        segmenter.load_segmenter(path, backend="onnx", threads=ONNX_THREADS)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types
        return _fall_back(path, "cannot be read", exc)
    return "onnx"


def _fall_back(path: Path, why: str, exc: Exception) -> str:
    cause = (str(exc).strip().splitlines() or [""])[0]
    warnings.warn(f"{path}: the lung segmenter runs in torch, its ONNX export {why} ({type(exc).__name__}: {cause})",
                  RuntimeWarning, stacklevel=3)
    return "torch"


def lung_engine(weights: Path) -> str:
    """``onnx`` when the segmenter of ``weights`` runs in ONNX Runtime (its export made or found, and a session
    opened: kept for :func:`segmenter_lungs`'s ``load``), else ``torch``, with a warning saying why. Exporting
    happens once per weight file and torch release (cached); opening the session takes some 60 ms."""
    if not weights.is_file():
        return "onnx"
    stat = weights.stat()
    return _engine(weights.resolve(), stat.st_mtime_ns, stat.st_size)


def segmenter_lungs(weights: str | os.PathLike | None = None) -> LungFinder:
    """The lung segmenter of ``weights`` (the bundled one when None) as a :class:`LungFinder` whose digest names
    the weights and the engine (``<weights digest>|onnx`` or ``|torch``, see the module's docstring). The engine
    is chosen now; the network's batch finder is made only when an image must be prepared."""
    path = Path(weights) if weights is not None else segmenter.DEFAULT_WEIGHTS
    engine = lung_engine(path)
    threads = ONNX_THREADS if engine == "onnx" else None  # torch: its process-wide setting, see cxrscreen.threads
    return LungFinder(
        digest=f"{weights_digest(path)}|{engine}",
        load=lambda: segmenter.batch_lung_finder(segmenter.load_segmenter(path, backend=engine, threads=threads)),
    )
