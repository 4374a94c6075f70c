"""The one place that turns segmenter weights into a lung finder: :func:`load_lung_finder`.

Which engine runs the lung segmenter (ONNX Runtime or torch), on how many threads, and whether to fall back, is
decided here, once per weight file, and handed down as a :class:`SegmenterFinder`: to ``data`` (the prepared-image
cache, which sees it as a :class:`cxrscreen.data.transforms.LungFinder`), to the predictor (both of its backends)
and to the audit. None of them picks an engine of its own, so they all prepare a file to the same array.

The network runs in ONNX Runtime with one intra-op thread: one session, shared by the cache's decode workers and
the predictor's workers (a session may be run from several threads at once), so that workers x network threads =
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
from dataclasses import dataclass
from pathlib import Path

from cxrscreen.data.transforms import FindLungsBatch
from cxrscreen.errors import ModelError
from cxrscreen.hashing import file_hash
from cxrscreen.lungs import segmenter

# Intra-op threads of the ONNX Runtime session: the workers that share it run side by side, one CPU each.
ONNX_THREADS = 1


def weights_digest(weights: Path) -> str:
    """Digest of a segmenter weight file (``missing`` when absent: preparing then fails anyway, once)."""
    return file_hash(weights) if weights.is_file() else "missing"


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
    opened: kept for :meth:`SegmenterFinder.segmenter`), else ``torch``, with a warning saying why. Exporting
    happens once per weight file and torch release (cached); opening the session takes some 60 ms."""
    if not weights.is_file():
        return "onnx"
    stat = weights.stat()
    return _engine(weights.resolve(), stat.st_mtime_ns, stat.st_size)


@dataclass(frozen=True)
class SegmenterFinder:
    """The lung segmenter of ``weights`` run by ``engine`` (``onnx`` or ``torch``) on ``threads`` intra-op threads
    (None for torch: its process-wide setting, see :mod:`cxrscreen.threads`). A
    :class:`cxrscreen.data.transforms.LungFinder`: :attr:`digest` names the weights and the engine, :meth:`load`
    gives the batch finder preparation calls. The network is loaded on first use, once per process."""

    weights: Path
    engine: str
    threads: int | None

    @property
    def digest(self) -> str:
        """``<weights digest>|<engine>``: keys the prepared-image cache (see the module's docstring)."""
        return f"{weights_digest(self.weights)}|{self.engine}"

    def segmenter(self) -> segmenter.LungSegmenter:
        """The segmenter itself (masks, plausibility and the reason a mask is not plausible)."""
        return segmenter.load_segmenter(self.weights, backend=self.engine, threads=self.threads)

    def load(self) -> FindLungsBatch:
        """X-rays -> per image its lung mask, or None when the lungs found are not plausible; one network pass."""
        return self.segmenter().plausible_masks


def load_lung_finder(weights: str | os.PathLike | None = None) -> SegmenterFinder:
    """The lung finder of a segmenter weight file (the bundled one when None), its engine chosen now (see the
    module's docstring): what training, evaluation, the audit, prediction and ``data cache`` all use."""
    path = Path(weights) if weights is not None else segmenter.DEFAULT_WEIGHTS
    engine = lung_engine(path)
    return SegmenterFinder(path, engine, ONNX_THREADS if engine == "onnx" else None)
