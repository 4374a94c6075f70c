"""The lung segmenter's network in torch: the MONAI U-Net, its weight file, and its exports (ONNX, TorchScript).

Imported only where the network runs in torch, is trained, or is exported: running a cached ONNX export
(:mod:`cxrscreen.lungs.segmenter`) needs no torch.
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from cxrscreen.data.cache import cache_root
from cxrscreen.hashing import file_hash
from cxrscreen.errors import ModelError
from cxrscreen.io_utils import atomic_write
from cxrscreen.lungs.weights import DEFAULT_WEIGHTS, FILE_FORMAT, ONNX_META_KEY, SegmenterArch
from cxrscreen.models.checkpoint import read_weight_file
from cxrscreen.models.onnx import torch_tag, traced_onnx


class LungUNet(nn.Module):
    """(N, 1, S, S) float in [0, 1] -> lung logits (N, 1, S, S).

    Each image is standardised (zero mean, unit variance) inside the network: scanners and collections differ
    mostly in brightness and contrast, and doing it here keeps torch and ONNX inputs identical.
    """

    def __init__(self, arch: SegmenterArch):
        super().__init__()
        from monai.networks.nets import UNet

        self.unet = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=arch.channels,
            strides=arch.strides,
            num_res_units=arch.num_res_units,
            norm="batch",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        return self.unet((x - mean) / (std + 1e-3))


class LungProbabilityNet(nn.Module):
    """The exported graph: (N, 1, S, S) in [0, 1] -> lung probability (N, 1, S, S)."""

    def __init__(self, net: LungUNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def read_segmenter_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw weight file dict, validated; raises :class:`ModelError` naming the path and the cause."""
    return read_weight_file(path, FILE_FORMAT, "lung segmenter")


def build_network(path: str | os.PathLike) -> tuple[LungUNet, dict[str, Any]]:
    """The network of a weight file, in eval mode, and the file's description (``info``)."""
    payload = read_segmenter_file(path)
    info = payload["info"]
    net = LungUNet(SegmenterArch.from_dict(info["arch"]))
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the architecture they describe") from exc
    return net.eval(), info


def torch_predictor(net: LungUNet | torch.jit.ScriptModule) -> Callable[[np.ndarray], np.ndarray]:
    """Eager torch over a batch (N, 1, S, S) -> probabilities; ``net`` is a :class:`LungUNet` or the traced
    probability network of :func:`traced_segmenter`."""
    prob_net = net if isinstance(net, torch.jit.ScriptModule) else LungProbabilityNet(net).eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return prob_net(torch.from_numpy(batch)).numpy()

    return predict


def with_leaky_relus(net: LungUNet) -> LungUNet:
    """A copy of ``net`` whose one-slope PReLUs (MONAI's default activation) are LeakyReLUs of that slope: the same
    function, which ONNX Runtime runs in its blocked layout where PRelu costs a third of the network's time."""
    leaky = copy.deepcopy(net)
    for name, module in list(leaky.named_modules()):
        if isinstance(module, nn.PReLU) and module.weight.numel() == 1:
            parent, _, child = name.rpartition(".")
            setattr(leaky.get_submodule(parent), child, nn.LeakyReLU(float(module.weight.detach())))
    return leaky


def onnx_model_bytes(net: LungUNet, info: dict[str, Any]) -> bytes:
    """The network as an ONNX model (dynamic batch, output = probabilities), ``info`` in its metadata; its PReLUs
    as LeakyRelu (:func:`with_leaky_relus`: 5.5 instead of 7.2 ms per image on one thread, the same probabilities
    to the bit in a session of :func:`cxrscreen.lungs.segmenter.onnx_segmenter`)."""
    import onnx

    size = info["arch"]["img_size"]
    exported = traced_onnx(LungProbabilityNet(with_leaky_relus(net)), torch.rand(2, 1, size, size), ("lung_probability",))
    model = onnx.load_from_string(exported)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(info)
    return model.SerializeToString()


def export_segmenter_onnx(out_path: str | os.PathLike, weights: str | os.PathLike | None = None) -> Path:
    """Write the segmenter (bundled one when ``weights`` is None) as a self-describing ONNX file."""
    net, info = build_network(weights or DEFAULT_WEIGHTS)
    data = onnx_model_bytes(net, info)
    with atomic_write(out_path, "wb") as fh:
        fh.write(data)
    return Path(out_path)


def torch_segmenter_parts(weights: Path) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """(the traced network of ``weights`` as a batch predictor, the file's ``info``)."""
    return torch_predictor(traced_segmenter(weights)), read_segmenter_file(weights)["info"]


def traced_segmenter(weights: Path) -> torch.jit.ScriptModule:
    """The probability network of a weight file traced with TorchScript, made once and kept in cxrscreen's cache
    folder (``torchscript/``, keyed by the file's content). Loading the trace needs no MONAI, whose import took
    2.7 s and loads matplotlib; the traced graph runs the same operators. Traced in memory when the cache
    folder cannot be written."""
    target = cache_root() / "torchscript" / f"lungs-{file_hash(weights)}-torch{torch_tag()}.pt"
    if target.is_file():
        return torch.jit.load(str(target), map_location="cpu").eval()
    net, info = build_network(weights)
    size = info["arch"]["img_size"]
    with torch.inference_mode(False), torch.no_grad():
        # check_trace off: its re-trace gives a graph that differs between invocations for MONAI's UNet (torch 2.13);
        # the traced network's outputs are compared with the eager one's in tests/inference/test_batched_preparation.py.
        traced = torch.jit.trace(LungProbabilityNet(net).eval(), torch.rand(2, 1, size, size), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    try:
        with atomic_write(target, "wb") as fh:
            fh.write(buffer.getvalue())
    except OSError:
        pass  # a read-only cache: traced again next time
    return traced.eval()
