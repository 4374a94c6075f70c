"""Prepared (decoded, preprocessed, resized) images for training and evaluation.

:func:`load_prepared` is the one entry point: it returns the network inputs of many files as uint8 arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxrscreen.data.transforms import Preprocessing, prepare_from_source
from cxrscreen.errors import CxrError


@dataclass
class PreparedImages:
    """``images[i]`` (uint8, img_size x img_size) is the input of ``paths[ok[i]]``; ``errors`` lists (path, reason)."""

    images: np.ndarray
    ok: list[int]
    errors: list[tuple[str, str]] = field(default_factory=list)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_prepared(
    paths: list[str | os.PathLike],
    pp: Preprocessing,
    cache_dir: Path | None = None,
    progress: bool = True,
    on_bad_image: str = "skip",
) -> PreparedImages:
    """Prepare every file; bad files are reported in ``errors`` (or raise with ``on_bad_image="fail"``)."""
    images: list[np.ndarray] = []
    ok: list[int] = []
    errors: list[tuple[str, str]] = []
    for index, path in enumerate(tqdm(paths, desc="preparing images", unit="img", disable=not progress, leave=False)):
        try:
            images.append(to_uint8(prepare_from_source(path, pp)))
            ok.append(index)
        except CxrError as exc:
            if on_bad_image == "fail":
                raise
            errors.append((str(path), str(exc).split(": ", 1)[-1] if str(exc).startswith(str(path)) else str(exc)))
    empty = np.zeros((0, pp.img_size, pp.img_size), dtype=np.uint8)
    return PreparedImages(np.stack(images) if images else empty, ok, errors)
