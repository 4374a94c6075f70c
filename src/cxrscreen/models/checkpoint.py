"""A trained model is one self-describing file.

The file (``torch.save`` of a dict, loaded with ``weights_only=True``) holds the weights and a
:class:`ModelMeta`: architecture name, input size, preprocessing, class names, label mapping, training data
summary, validation metrics, calibration temperature, the out-of-distribution guard's statistics and the
perceptual hashes of the training images (so that evaluation elsewhere can leave their near-duplicates out).
Nothing about a model lives only in code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from cxrscreen.errors import ModelError
from cxrscreen.io_utils import atomic_write
from cxrscreen.models.meta import ModelMeta  # noqa: F401 - re-exported: a checkpoint's description
from cxrscreen.models.factory import create_model
from cxrscreen.models.registry import XrayClassifier

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: XrayClassifier, meta: ModelMeta, extra: dict[str, Any] | None = None) -> None:
    """Write weights + metadata atomically. ``extra`` (optimizer state, epoch, ...) is for resuming only."""
    payload = {
        "format": "cxrscreen-checkpoint",
        "format_version": FORMAT_VERSION,
        "meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if extra:
        payload["extra"] = extra
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())


def save_shipping_copy(source: str | Path, target: str | Path, half: bool = False) -> None:
    """Copy a checkpoint without its resuming state; ``half`` stores the floating-point weights as float16 (half
    the file; :func:`load_checkpoint` widens them back). Whether a half copy's answers still hold is the caller's
    to check."""
    payload = read_checkpoint(source)
    payload.pop("extra", None)
    if half:
        payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(target, "wb") as fh:
        fh.write(buffer.getvalue())


def read_weight_file(path: str | Path, file_format: str, what: str) -> dict[str, Any]:
    """A ``torch.save``d dict whose ``format`` is ``file_format``, loaded safely (``weights_only``); raises
    :class:`ModelError` naming the path and the cause (``what`` names the kind of file in messages)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: {what} file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ModelError(f"{path}: not a readable cxrscreen {what} ({type(exc).__name__}: {exc})".split("\n")[0]) from exc
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise ModelError(f"{path}: not a cxrscreen {what} file")
    return payload


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, validated; raises :class:`ModelError` with the path and cause."""
    payload = read_weight_file(path, "cxrscreen-checkpoint", "model")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{path}: written by a newer cxrscreen (format {payload['format_version']})")
    return payload


def load_checkpoint(path: str | Path) -> tuple[XrayClassifier, ModelMeta]:
    """Rebuild the classifier from its file, in eval mode. The weights need no network access."""
    payload = read_checkpoint(path)
    meta = ModelMeta.from_dict(payload["meta"])
    model = create_model(meta.arch, len(meta.classes), pretrained=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit architecture {meta.arch}") from exc
    return model.eval(), meta
