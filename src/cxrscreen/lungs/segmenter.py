"""The lung segmenter: a small MONAI U-Net that finds the lung fields on a chest X-ray.

Input follows the one image convention (float32 (H, W) in [0, 1]); :func:`segment_lungs` returns a boolean mask at
the image's own size, cleaned up (the two largest components kept, holes filled) and checked for plausibility, so
that callers fall back to the whole image instead of trusting a bad mask.

The network runs on CPU in torch or in ONNX Runtime; both share the resizing and post-processing here, so they give
the same mask. The weight file is self-describing (architecture, input size, training summary, test Dice) and the
bundled one, ``weights/lung_unet.pt``, is loaded once per process. This module imports no torch: the network in
torch, its weight file and its exports are in :mod:`cxrscreen.lungs.network`, imported only by the torch backend
and to export once (the ONNX export is cached, so ONNX Runtime users load torch only the first time).

Training and evaluation (``cxrscreen segment train``) live in :mod:`cxrscreen.lungs.training`.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cxrscreen.data.transforms import resize
from cxrscreen.errors import ConfigError, ModelError
from cxrscreen.hashing import file_hash
from cxrscreen.io_utils import atomic_write
from cxrscreen.lungs.weights import DEFAULT_WEIGHTS, FILE_FORMAT, IMG_SIZES, ONNX_META_KEY, SegmenterArch  # noqa: F401
from cxrscreen.models.onnx import INPUT_NAME, OPSET, cpu_session, session_metadata, torch_tag
from cxrscreen.models.onnx import cache_dir as onnx_cache_dir

LUNG_MASK_VALUES = (150, 200, 255)
BACKENDS = ("torch", "onnx")
# ONNX Runtime's Conv+activation fusion computes the export's LeakyRelus (cxrscreen.lungs.network.with_leaky_relus)
# otherwise than the PRelus they replace (up to 8e-7 apart); without it, the probabilities are the PRelu graph's.
UNFUSED = ("ConvActivationFusion",)
# A single-threaded session runs the network one image at a time: at 160 px a batch's activations (1.6 MB per image
# and layer) spill out of the core's cache, and 32 images at once took 15-20% longer per image than one at a time,
# with the same probabilities to the bit (tests/lungs/test_leaky_export.py). A session with more threads takes
# the batch whole, which keeps its threads busy.
ONE_THREAD_CHUNK = 1


# ----------------------------------------------------------------------------------------------------------------
# Post-processing and plausibility


@dataclass(frozen=True)
class PlausibilityLimits:
    """When a mask looks like two lungs. Lungs cover about 25% of an adult PA X-ray (15-40% on the training masks).

    - ``min_area`` / ``max_area``: lung area as a fraction of the image.
    - ``min_side_share``: each half of the image (left/right) must hold this share of the lung area.
    - ``max_uncertain``: share of the pixels with a lung probability above 0.2 that are below 0.8; a network that
      does not recognise the picture is unsure over large regions.
    """

    min_area: float = 0.06
    max_area: float = 0.60
    min_side_share: float = 0.20
    max_uncertain: float = 0.35


@dataclass
class LungSegmentation:
    """``mask``: bool (H, W) at the image's size, True = lung. ``reason`` says why a mask is not plausible."""

    mask: np.ndarray
    plausible: bool
    area_fraction: float
    reason: str | None = None


def clean_mask(mask: np.ndarray, keep: int = 2, min_relative_size: float = 0.1) -> np.ndarray:
    """Keep the ``keep`` largest connected components (dropping any below ``min_relative_size`` of the largest)
    and fill their holes. bool (H, W) -> bool (H, W).

    Components and holes are 4-connected, as ``scipy.ndimage.label`` and ``binary_fill_holes`` count them (the
    result is the same, to the pixel); OpenCV's labelling takes 0.1 ms where those took 6 ms on a 299 x 299 image."""
    import cv2

    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    sizes = component_sizes(labels, count)
    order = np.argsort(sizes)[::-1][:keep]
    chosen = [index + 1 for index in order if sizes[index] >= min_relative_size * sizes[order[0]]]
    if len(chosen) == count - 1 and mask.dtype == bool:  # every component stays (two lungs, nothing else)
        return fill_holes(mask)
    kept = labels == chosen[0]
    for label in chosen[1:]:
        kept |= labels == label
    return fill_holes(kept)


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Pixels of each component (labels 1 .. ``count`` - 1) of a label image. One comparison per label while they
    are few (a lung mask has a handful), which is 4x faster than ``bincount`` (or OpenCV's statistics) there."""
    if count > 8:
        return np.bincount(labels.ravel(), minlength=count)[1:]
    return np.array([np.count_nonzero(labels == label) for label in range(1, count)])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the image border (4-connected) set to True.

    One flood fill of the background from a frame around the mask's bounding box: a background pixel outside the
    box reaches the border, so one inside it does exactly when it reaches the box's edge."""
    import cv2

    filled = np.array(mask, dtype=bool)
    left, top, width, height = cv2.boundingRect(filled.view(np.uint8))
    if width == 0:
        return filled
    framed = np.zeros((height + 2, width + 2), dtype=np.uint8)
    box = (slice(top, top + height), slice(left, left + width))
    framed[1:-1, 1:-1] = filled[box]
    cv2.floodFill(framed, None, (0, 0), 2, 0, 0, 4)  # value 2: the background that reaches the frame
    filled[box] = framed[1:-1, 1:-1] != 2
    return filled


def check_plausibility(mask: np.ndarray, uncertain_fraction: float, limits: PlausibilityLimits) -> str | None:
    """None when ``mask`` (bool (H, W)) looks like a pair of lungs, else the reason it does not."""
    lung = int(np.count_nonzero(mask))
    area = lung / mask.size  # the float mask.mean() gives (it sums in float64), 10x faster
    if area == 0.0:
        return "no lungs found"
    if area < limits.min_area:
        return f"lung area {area:.1%} of the image is too small (under {limits.min_area:.1%})"
    if area > limits.max_area:
        return f"lung area {area:.1%} of the image is too large (over {limits.max_area:.1%})"
    half = mask.shape[1] // 2
    left_share = float(np.count_nonzero(mask[:, :half])) / float(lung)
    if min(left_share, 1.0 - left_share) < limits.min_side_share:
        return "lungs found on one side only"
    if uncertain_fraction > limits.max_uncertain:
        return f"segmenter unsure ({uncertain_fraction:.0%} of the possible lung area is uncertain)"
    return None


def probabilities_to_segmentation(
    probs: np.ndarray, size: tuple[int, int], limits: PlausibilityLimits
) -> LungSegmentation:
    """Lung probabilities (S, S) in [0, 1] -> :class:`LungSegmentation` at ``size`` (H, W)."""
    full = resize(probs.astype(np.float32, copy=False), size)
    mask = clean_mask(full >= 0.5)
    possible = np.count_nonzero(probs > 0.2)
    uncertain = float(np.count_nonzero(probs < 0.8) - np.count_nonzero(probs <= 0.2)) / max(float(possible), 1.0)
    reason = check_plausibility(mask, uncertain, limits)
    area = int(np.count_nonzero(mask)) / mask.size
    return LungSegmentation(mask=mask, plausible=reason is None, area_fraction=area, reason=reason)


# ----------------------------------------------------------------------------------------------------------------
# Inference


class LungSegmenter:
    """Runs a lung network (torch or ONNX Runtime) and turns its output into :class:`LungSegmentation`.

    ``predict_probs`` maps a float32 batch (N, 1, S, S) in [0, 1] to lung probabilities of the same shape.
    """

    def __init__(
        self,
        predict_probs: Callable[[np.ndarray], np.ndarray],
        info: dict[str, Any],
        backend: str,
        limits: PlausibilityLimits = PlausibilityLimits(),
    ):
        self.predict_probs = predict_probs
        self.info = info
        self.backend = backend
        self.arch = SegmenterArch.from_dict(info["arch"])
        self.limits = limits

    @property
    def img_size(self) -> int:
        return self.arch.img_size

    def network_input(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images (H, W) in [0, 1] of any sizes -> float32 batch (N, 1, S, S)."""
        batch = [resize(np.clip(image, 0.0, 1.0).astype(np.float32), self.img_size) for image in images]
        return np.stack(batch)[:, None].astype(np.float32)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Lung probabilities (N, S, S) in [0, 1] at the network's input size."""
        return self.predict_probs(self.network_input(images))[:, 0]

    def segment(self, image: np.ndarray) -> LungSegmentation:
        """One image, float32 (H, W) in [0, 1] -> :class:`LungSegmentation` at (H, W)."""
        return self.segment_batch([image])[0]

    def segment_batch(self, images: Sequence[np.ndarray], batch_size: int = 32) -> list[LungSegmentation]:
        """Many images (each (H, W) in [0, 1], sizes may differ), run through the network in batches."""
        out: list[LungSegmentation] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            for image, probs in zip(chunk, self.probabilities(chunk)):
                out.append(probabilities_to_segmentation(probs, image.shape, self.limits))
        return out

    def plausible_masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Per X-ray its lung mask, or None when the lungs found are not plausible (one network pass per batch):
        the :data:`cxrscreen.data.transforms.FindLungsBatch` preparation takes."""
        return [lungs.mask if lungs.plausible else None for lungs in self.segment_batch(images)]

    def plausible_mask(self, image: np.ndarray) -> np.ndarray | None:
        """:meth:`plausible_masks` of one X-ray (a :data:`cxrscreen.data.transforms.FindLungs`)."""
        return self.plausible_masks([image])[0]


def session_predictor(session: Any, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``session`` as a batch predictor; with ``threads`` == 1, run :data:`ONE_THREAD_CHUNK` images at a time."""
    chunk = ONE_THREAD_CHUNK if threads == 1 else None

    def predict(batch: np.ndarray) -> np.ndarray:
        if chunk is None or len(batch) <= chunk:
            return session.run(None, {INPUT_NAME: batch})[0]
        return np.concatenate([session.run(None, {INPUT_NAME: batch[i : i + chunk]})[0] for i in range(0, len(batch), chunk)])

    return predict


def onnx_segmenter(model: Path | bytes, threads: int | None, name: str) -> LungSegmenter:
    """The segmenter of an exported network (its file or bytes) in ONNX Runtime, described by the ``info`` its
    export stored in the model's metadata; a :class:`ModelError` naming ``name`` for a foreign file."""
    try:
        session = cpu_session(model, threads, disabled=UNFUSED)
    except Exception as exc:  # onnxruntime raises its own exception types for unusable files
        raise ModelError(f"{name}: not a readable ONNX model ({type(exc).__name__})") from exc
    props = session_metadata(session)
    if ONNX_META_KEY not in props:
        raise ModelError(f"{name}: not a cxrscreen lung segmenter (no metadata)")
    return LungSegmenter(session_predictor(session, threads), json.loads(props[ONNX_META_KEY]), "onnx")


def exported_segmenter(weights: Path) -> Path | bytes:
    """The ONNX export of a segmenter weight file, made once and kept in cxrscreen's cache folder (``onnx/``, keyed
    by the file's content and the exporting torch): exporting takes seconds and torch, which every ONNX Runtime
    process paid at start-up. Finding it loads no torch. Its bytes when the cache folder cannot be written."""
    target = onnx_cache_dir() / f"lungs-{file_hash(weights)}-leaky-opset{OPSET}-torch{torch_tag()}.onnx"
    if target.is_file():
        return target
    from cxrscreen.lungs.network import build_network, onnx_model_bytes  # torch: only to export, once

    model = onnx_model_bytes(*build_network(weights))
    try:
        with atomic_write(target, "wb") as fh:
            fh.write(model)
    except OSError:
        return model  # a read-only cache: exported again next time
    return target


@functools.lru_cache(maxsize=8)
def cached_segmenter(path: str, backend: str, mtime: float, threads: int | None = None) -> LungSegmenter:
    file = Path(path)
    if backend == "onnx":
        return onnx_segmenter(file if file.suffix == ".onnx" else exported_segmenter(file), threads, path)
    if file.suffix == ".onnx":
        raise ConfigError(f"{path}: an .onnx segmenter needs backend='onnx'")
    from cxrscreen.lungs.network import torch_segmenter_parts  # torch: only for the torch backend (start-up time)

    return LungSegmenter(*torch_segmenter_parts(file), backend)


def load_segmenter(
    path: str | os.PathLike | None = None, backend: str = "torch", threads: int | None = None
) -> LungSegmenter:
    """The lung segmenter of a weight file (``.pt``, or ``.onnx`` for backend ``onnx``); the bundled one when
    ``path`` is None. Loaded once per process per (file, backend, threads); no network access. ``threads``:
    intra-op threads of the ONNX Runtime session (None: its default); torch uses its process-wide setting."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    file = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not file.is_file():
        hint = " (the bundled segmenter is missing; train one with `cxrscreen segment train`)" if path is None else ""
        raise ModelError(f"{file}: lung segmenter file not found{hint}")
    return cached_segmenter(str(file.resolve()), backend, file.stat().st_mtime, threads)


def segment_lungs(image: np.ndarray, segmenter: LungSegmenter | None = None) -> LungSegmentation:
    """Find the lungs on one X-ray, float32 (H, W) in [0, 1]; the bundled segmenter unless one is given."""
    return (segmenter or load_segmenter()).segment(image)
