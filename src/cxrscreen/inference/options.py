"""How a loaded model decides and where it runs: decision thresholds, device, CPU threads and workers.

Light on purpose (no torch, no image code): the command line reads these names to build its options, and ``--help``
must not wait for the networks' libraries.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from cxrscreen.errors import ConfigError
from cxrscreen.threads import available_cpus

if TYPE_CHECKING:  # no numpy here: the command line's parser reads this module
    import numpy as np

BACKENDS = ("auto", "torch", "onnx")
DEFAULT_BACKEND = "auto"
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_BATCH_SIZE = 32


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """``["covid=0.3", ...]`` (the CLI's ``--threshold CLASS=P``) -> ``{"covid": 0.3}``; a :class:`ConfigError`
    naming the item when it is not ``CLASS=P`` with P in [0, 1] or names a class twice. Class names are checked
    against the model by :func:`check_thresholds`."""
    thresholds: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            probability = float(value)
        except ValueError:
            probability = float("nan")
        if not sep or not name or not 0.0 <= probability <= 1.0:
            raise ConfigError(f"--threshold {item!r}: expected CLASS=P with P a probability in [0, 1]")
        if name in thresholds:
            raise ConfigError(f"--threshold {item!r}: class {name!r} given twice")
        thresholds[name] = probability
    return thresholds


def check_thresholds(thresholds: dict[str, float], classes: Sequence[str]) -> dict[str, float]:
    """``thresholds`` as {class: float} after checking every class is the model's and every value in [0, 1]."""
    checked: dict[str, float] = {}
    for name, value in thresholds.items():
        if name not in classes:
            raise ConfigError(f"--threshold {name}: not one of the model's classes: {', '.join(classes)}")
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"--threshold {name}={value}: a threshold is a probability in [0, 1]")
        checked[name] = float(value)
    return checked


def check_target(target: str | None, classes: list[str]) -> None:
    """A :class:`ConfigError` unless ``target`` is None or one of ``classes``."""
    if target is not None and target not in classes:
        raise ConfigError(f"--target {target!r} is not one of the model's classes: {', '.join(classes)}")


def decide(probs: np.ndarray, classes: Sequence[str], thresholds: dict[str, float]) -> int:
    """The index of the predicted class of one probability row (C,).

    The rule: a class with a threshold is *passed* when its probability is >= its threshold. If any class is
    passed, the most probable passed class wins. Otherwise the most probable class among those without a
    threshold wins (among all classes when every class has one). Without thresholds this is the argmax. E.g.
    ``{"covid": 0.3}``: COVID when p(covid) >= 0.3, else the likelier of the other classes.
    """
    values = [float(p) for p in probs]
    passed = [i for i, c in enumerate(classes) if c in thresholds and values[i] >= thresholds[c]]
    if not passed:
        passed = [i for i, c in enumerate(classes) if c not in thresholds] or list(range(len(classes)))
    return max(passed, key=lambda i: values[i])


@dataclass(frozen=True)
class Decision:
    """How :func:`decide` chose ``label`` for one image, for every place that shows the label.

    ``rule``: ``most_probable`` (no threshold applies: the label is the most probable class), ``threshold``
    (``label`` reached its own threshold ``cutoff``), or ``below_threshold`` (every class with a threshold stayed
    below it - ``below`` maps each to its cut-off - and ``label`` is the most probable of the rest).
    ``most_probable`` is the class with the largest probability, which a threshold may overrule.
    """

    label: str
    rule: str
    most_probable: str
    probability: float
    cutoff: float | None = None
    below: dict[str, float] = field(default_factory=dict)

    @property
    def overrules_most_probable(self) -> bool:
        """Whether the label is not the most probable class (a threshold decided against the largest bar)."""
        return self.label != self.most_probable

    def describe(self) -> str:
        """One line for people: why this label (e.g. ``p(covid) 0.352 >= threshold 0.3``)."""
        if self.rule == "threshold":
            text = f"p({self.label}) {self.probability:.3f} >= threshold {self.cutoff:g}"
        elif self.rule == "below_threshold":
            cut = ", ".join(f"{name} < {value:g}" for name, value in self.below.items())
            text = f"below threshold ({cut}); most probable of the rest"
        else:
            return "most probable class"
        if self.overrules_most_probable:
            text += f"; most probable class is {self.most_probable}"
        return text

    def brief(self) -> str:
        """A short table cell: ``most probable``, ``viral>=0.3`` (its threshold named it) or ``covid<0.3`` (below
        its threshold), with ``, top normal`` when the label is not the most probable class."""
        if self.rule == "threshold":
            text = f"{self.label}>={self.cutoff:g}"
        elif self.rule == "below_threshold":
            text = ",".join(f"{name}<{value:g}" for name, value in self.below.items())
        else:
            return "most probable"
        return f"{text}, top {self.most_probable}" if self.overrules_most_probable else text

    def to_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "label": self.label,
            "threshold": self.cutoff,
            "below_threshold": dict(self.below),
            "most_probable": self.most_probable,
            "text": self.describe(),
        }


def explain_decision(probs: np.ndarray, classes: Sequence[str], thresholds: dict[str, float]) -> Decision:
    """The :class:`Decision` :func:`decide` makes on one probability row (C,)."""
    values = [float(p) for p in probs]
    index = decide(probs, classes, thresholds)
    label = classes[index]
    top = classes[max(range(len(values)), key=values.__getitem__)]
    if label in thresholds and values[index] >= thresholds[label]:
        return Decision(label, "threshold", top, values[index], cutoff=thresholds[label])
    below = {c: thresholds[c] for c in classes if c in thresholds}
    rule = "below_threshold" if below else "most_probable"
    return Decision(label, rule, top, values[index], below=below)


def resolve_backend(backend: str, device: str, model_path: Path) -> str:
    """``auto``/``torch``/``onnx`` -> the engine that runs the classifier. ``auto``: torch when the model runs on a
    CUDA GPU (``device`` ``cuda``, or ``auto`` with a GPU torch can use), else ONNX Runtime (an ``.onnx`` file
    always): on the CPU it starts without torch (import 2-3 s) and runs the network 3x faster. Grad-CAM still
    works, loading the torch network when first asked."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if model_path.suffix.lower() == ".onnx":
        return "onnx"
    if device == "cuda" or (device == "auto" and nvidia_gpu_present() and resolve_device("auto", "torch") == "cuda"):
        return "torch"
    return "onnx"


def nvidia_gpu_present() -> bool:
    """Whether the machine may have an NVIDIA GPU, told without importing torch: on Linux, the driver's device
    files (``/dev/nvidia0``...); elsewhere, assumed (torch is then asked)."""
    dev = Path("/dev")
    return not dev.is_dir() or any(dev.glob("nvidia[0-9]*"))


def resolve_device(device: str, backend: str) -> str:
    """``auto``/``cpu``/``cuda`` -> the device to run on; a :class:`ConfigError` for ``cuda`` without a usable
    GPU or with the ONNX backend (which this package runs on the CPU execution provider only)."""
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if backend == "onnx":
        if device == "cuda":
            raise ConfigError("--device cuda: the onnx backend runs on the CPU; use --backend torch for a GPU")
        return "cpu"
    import torch  # only the torch backend pays for it

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available to torch here; use --device cpu or auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_threads() -> int:
    """CPU threads a predictor uses when none are asked for: the CPUs this process may use, at most 4.

    They are spent on images, not on operators: that many workers each prepare and score their own batches with
    single-threaded networks. Intra-op threads wait at barriers for each other: beside another busy process on a
    2-core machine, torch's default of 2 took 1,181 ms for one prediction against 80 ms with 1. Workers never wait
    for each other, so a busy CPU only slows the worker it shares; counting busy CPUs out (by the 1-minute load
    average, which lags) halved a folder's speed for a minute after any other command had run, the benchmark's
    previous process included. At most 4, because a server runs several requests side by side.
    """
    return min(4, available_cpus())


@contextmanager
def single_threaded_libraries(opencv: bool) -> Iterator[None]:
    """While a predictor works: the numerical libraries its workers call made single-threaded, and restored when
    the last predictor's work in the process ends (serve's requests overlap): OpenBLAS (the OOD guard's matrix
    products), OpenCV when ``opencv`` (lung-focused preprocessing) or already loaded, and torch's intra-op threads
    when torch is loaded. Like torch's intra-op threads, their own thread pools wait for each other: with both
    CPUs busy with workers, a (32 x 1536) x (1536 x 32) product took 22-42 ms on OpenBLAS's 2 threads against 0.1
    ms on one, and the guard's scoring 1.5 ms per image. Scoped, not process-wide: a fine-tuning that loads a
    predictor first (``adapt``) trains on every CPU afterwards."""
    global _single_threaded_users
    with _SINGLE_THREADED_LOCK:
        if _single_threaded_users == 0:
            _restore_threads[:] = _limit_to_one_thread(opencv)
        _single_threaded_users += 1
    try:
        yield
    finally:
        with _SINGLE_THREADED_LOCK:
            _single_threaded_users -= 1
            if _single_threaded_users == 0:
                for restore in reversed(_restore_threads):
                    restore()
                _restore_threads.clear()


_SINGLE_THREADED_LOCK = threading.Lock()
_single_threaded_users = 0
_restore_threads: list[Callable[[], object]] = []


def _limit_to_one_thread(opencv: bool) -> list[Callable[[], object]]:
    """Set the libraries of :func:`single_threaded_libraries` to one thread; the calls that undo it."""
    restore: list[Callable[[], object]] = []
    with_opencv = opencv or "cv2" in sys.modules
    if with_opencv:
        import cv2  # before the BLAS controller: OpenCV loads an OpenBLAS of its own

        restore.append(functools.partial(cv2.setNumThreads, cv2.getNumThreads()))
        cv2.setNumThreads(1)
    restore.append(blas_controller(with_opencv).limit(limits=1, user_api="blas").restore_original_limits)
    torch = sys.modules.get("torch")  # never imported for this: the ONNX backend runs without torch
    if torch is not None:
        restore.append(functools.partial(torch.set_num_threads, torch.get_num_threads()))
        torch.set_num_threads(1)
    return restore


@functools.lru_cache(maxsize=2)
def blas_controller(with_opencv: bool) -> Any:
    """threadpoolctl's controller of the BLAS libraries loaded now, made once per ``with_opencv`` (whether OpenCV's
    own OpenBLAS is loaded yet): listing the libraries takes some 20 ms."""
    from threadpoolctl import ThreadpoolController  # small (8 ms); scikit-learn's own dependency

    return ThreadpoolController()


def chunk_size(count: int, workers: int, batch_size: int) -> int:
    """Images per batch when ``count`` images are shared by ``workers``: every worker gets work, at most
    ``batch_size`` images at a time."""
    return max(1, min(batch_size, math.ceil(count / max(1, workers))))
