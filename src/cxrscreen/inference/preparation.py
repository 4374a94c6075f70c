"""Many inputs made ready for the classifier, a batch at a time: the preparation predict, evaluate and serve share.

For a batch of sources (batches themselves run on the predictor's workers): decode them, find the lungs of all
of them in one pass of the segmenter (:meth:`Preprocessing.prepare_many`), crop, mask and equalise each, and
shrink each whole image for the out-of-distribution guard when it reads the whole image. One image is a batch of
one, so a file predicted alone and in a folder gets the same input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cxrscreen.data.imageio import ImageSource, load_xray
from cxrscreen.data.transforms import FindLungsBatch, Prepared, Preprocessing
from cxrscreen.errors import CxrError
from cxrscreen.guard.inputs import guard_thumbnail


@dataclass
class PreparedBatch:
    """What became of a batch of sources. ``positions``: the positions (in the batch) of the sources that could
    be prepared, in order; ``prepared`` and ``thumbnails`` (the guard's inputs float32 (N, 64, 64), or None
    when it does not read the whole image) hold theirs. ``failures``: position -> the error that stopped it."""

    positions: list[int]
    prepared: list[Prepared]
    thumbnails: np.ndarray | None
    failures: dict[int, CxrError]

    @property
    def inputs(self) -> np.ndarray:
        """The network inputs, float32 (N, S, S) in [0, 1]."""
        return np.stack([item.input for item in self.prepared]) if self.prepared else np.zeros((0, 0, 0), np.float32)

    @property
    def lungs_found(self) -> list[bool | None]:
        return [item.lungs_found for item in self.prepared]


def source_name(source: ImageSource, name: str | None) -> str:
    """How an input is named in results and error messages."""
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return "<upload>"
    if isinstance(source, np.ndarray):
        return "<array>"
    return "<image>"


def failure_reason(error: CxrError, name: str) -> str:
    """The reason of an error whose message starts with ``name: `` (the convention), without the name."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def decode_all(sources: Sequence[ImageSource], names: Sequence[str]) -> list[np.ndarray | CxrError]:
    """Each source decoded (float32 (H, W) in [0, 1]), or the :class:`CxrError` that says why it could not be."""

    def decode(index: int) -> np.ndarray | CxrError:
        try:
            return load_xray(sources[index], names[index])
        except CxrError as exc:
            return exc

    return [decode(i) for i in range(len(sources))]


def decode_and_prepare(
    sources: Sequence[ImageSource],
    names: Sequence[str],
    pp: Preprocessing,
    find_lungs: FindLungsBatch | None,
    with_thumbnails: bool,
) -> PreparedBatch:
    """Decode and prepare a batch of sources (see the module's docstring); ``find_lungs`` (the batch finder of
    :func:`cxrscreen.lungs.finder.load_lung_finder`) is required when ``pp.needs_lungs``; ``with_thumbnails``: also
    the guard's whole-image inputs."""
    decoded = decode_all(sources, names)
    positions = [i for i, image in enumerate(decoded) if isinstance(image, np.ndarray)]
    failures = {i: image for i, image in enumerate(decoded) if isinstance(image, CxrError)}
    images = [decoded[i] for i in positions]
    prepared = pp.prepare_many(images, find_lungs)
    thumbnails = None
    if with_thumbnails and images:
        thumbnails = np.stack([guard_thumbnail(image) for image in images])
    return PreparedBatch(positions, prepared, thumbnails, failures)
