"""What the out-of-distribution guard is given: the whole decoded image shrunk to 64 x 64 (no lungs, no
equalisation), and the constants that name its network and set its threshold. numpy only, so that preparing a
batch (:mod:`cxrscreen.inference.preparation`) and checking a stored guard import no torch; the network that reads
these inputs is :mod:`cxrscreen.guard.network`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.imageio import to_float
from cxrscreen.data.transforms import Preprocessing, prepare_image

GUARD_SIZE = 64
GUARD_NETWORK = "efficientnet_lite0-imagenet/stage6-mean-std/64px-whole-image"
# Share of the run's training and validation images (scored out of fold) the threshold accepts: the goal is that at
# most 1% of held-out real X-rays are flagged, and the scores of held-out images vary more than the fitted ones'
# (MODEL_CARD.md).
GUARD_ACCEPT_RATE = 0.995


def guard_preprocessing() -> Preprocessing:
    """How a decoded X-ray becomes the guard's input: the whole image resized to 64 x 64, nothing else."""
    return Preprocessing(img_size=GUARD_SIZE)


def guard_thumbnail(image: np.ndarray) -> np.ndarray:
    """Decoded X-ray float32 (H, W) in [0, 1] -> the guard's input, float32 (64, 64) in [0, 1]."""
    return prepare_image(image, guard_preprocessing())


def guard_thumbnails(
    paths: list[str] | list[Path], progress: bool = False, on_bad_image: str = "fail"
) -> tuple[np.ndarray, list[int]]:
    """The guard's inputs of image files (through the prepared-image cache), float32 (M, 64, 64), and the indices in
    ``paths`` of the M files that decoded. A file that does not decode raises
    :class:`cxrscreen.errors.ImageDecodeError`, or with ``on_bad_image="skip"`` is left out."""
    prepared = load_prepared(list(paths), guard_preprocessing(), progress=progress, on_bad_image=on_bad_image)
    return to_float(prepared.images), prepared.ok
