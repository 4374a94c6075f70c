"""The lung segmenter handed to preparation as a :class:`cxrscreen.data.transforms.LungFinder`: ``data`` never
imports the lungs, every caller that prepares lung-focused images (training, evaluation, the cache command) passes
:func:`segmenter_lungs` in."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from cxrscreen.data.cache import content_hash
from cxrscreen.data.transforms import LungFinder
from cxrscreen.lungs import segmenter


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, mtime_ns: int, size: int) -> str:
    return content_hash(path.read_bytes())


def weights_digest(weights: Path) -> str:
    """Digest of a segmenter weight file (``missing`` when absent: preparing then fails anyway, once)."""
    if not weights.is_file():
        return "missing"
    stat = weights.stat()
    return _file_digest(weights, stat.st_mtime_ns, stat.st_size)


def segmenter_lungs(weights: str | os.PathLike | None = None) -> LungFinder:
    """The lung segmenter of ``weights`` (the bundled one when None) as a :class:`LungFinder`; the network is
    loaded only when an image must be prepared."""
    path = Path(weights) if weights is not None else segmenter.DEFAULT_WEIGHTS
    return LungFinder(
        digest=weights_digest(path),
        load=lambda: segmenter.batch_lung_finder(segmenter.load_segmenter(weights)),
    )
