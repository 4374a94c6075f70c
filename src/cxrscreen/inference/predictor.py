"""Predict and explain with a trained classifier, through torch or ONNX Runtime.

:func:`load_predictor` turns a model file (checkpoint ``.pt``, run directory, or exported ``.onnx``) into a
:class:`Predictor`. Every path - one image, a batch, already-prepared arrays - ends in the same post-processing:
logits / ``meta.temperature`` -> softmax, and the out-of-distribution guard when the model carries one
(``meta.ood``: on the whole image seen through :mod:`cxrscreen.models.guard_net`, or, for models from before it, on
the classifier's penultimate features). A screening aid, not a diagnosis: every result carries
:data:`cxrscreen.SCREENING_NOTICE`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence, overload

import numpy as np
import torch

from cxrscreen import SCREENING_NOTICE
from cxrscreen.data import transforms
from cxrscreen.data.imageio import ImageSource, load_xray
from cxrscreen.errors import ConfigError, CxrError, ModelError
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint
from cxrscreen.models.guard_net import guard_thumbnail
from cxrscreen.models.registry import XrayClassifier

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "weights" / "default.pt"
OUT_OF_DISTRIBUTION_LABEL = "not a chest X-ray?"
BACKENDS = ("torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_BATCH_SIZE = 32


@dataclass
class Prediction:
    """One image's result. ``probabilities`` (class -> p, summing to 1) are temperature-scaled.

    ``label`` is the class chosen by :func:`decide` (the most probable class unless decision thresholds are set),
    or ``"not a chest X-ray?"`` when the OOD guard rejects the image (``in_distribution`` False). ``ood_score``
    is None when the model has no guard; ``lungs_found`` is None when the model's preprocessing does not look for
    the lungs. ``known_limits``: the model's known weaknesses (:attr:`Predictor.known_limits`).
    """

    source: str
    label: str
    probabilities: dict[str, float]
    in_distribution: bool
    ood_score: float | None
    lungs_found: bool | None
    known_limits: list[str] = field(default_factory=list)

    @property
    def top_class(self) -> str:
        """The most probable class, even when the image was flagged as out of distribution."""
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "in_distribution": self.in_distribution,
            "ood_score": self.ood_score,
            "lungs_found": self.lungs_found,
            "known_limits": list(self.known_limits),
            "notice": SCREENING_NOTICE,
        }


@dataclass
class PredictionFailure:
    """An input that could not be predicted: ``source`` (path or name) and the one-line ``reason``."""

    source: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "error": self.reason}

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class Explanation:
    """Grad-CAM for one image: ``heatmap`` float32 (H, W) in [0, 1] at the input image's size (zero outside the
    part of the image the network saw), the X-ray with the heatmap overlaid as PNG bytes, the class it explains,
    and ``prepared``: the network input it explains, with its frame in the image (the same one
    :meth:`Predictor.predict` scores)."""

    heatmap: np.ndarray
    overlay_png: bytes
    target: str
    prepared: transforms.Prepared


class InferenceBackend(Protocol):
    """Runs the network: inputs float32 (N, 1, S, S) in [0, 1] -> (logits (N, C), features (N, F)), float32."""

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class NetOutputs(NamedTuple):
    """The answer for a batch: ``probs`` (N, C) temperature-scaled, ``features`` (N, F) the classifier's
    penultimate features, ``guard_features`` (N, G) the whole-image features of
    :mod:`cxrscreen.models.guard_net`, or None when the guard does not read them or no thumbnails were given."""

    probs: np.ndarray
    features: np.ndarray
    guard_features: np.ndarray | None


class TorchBackend:
    """Eager PyTorch in inference mode on ``device`` (``cpu`` or ``cuda``); channels-last memory layout when it is
    faster for the network."""

    def __init__(self, model: XrayClassifier, channels_last: bool = True, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features = self.model.features(x)
            logits = self.model.head(features)
        return logits.float().cpu().numpy(), features.float().cpu().numpy()


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


def decide(probs: np.ndarray, classes: Sequence[str], thresholds: dict[str, float]) -> int:
    """The index of the predicted class of one probability row (C,).

    The rule: a class with a threshold is *passed* when its probability is >= its threshold. If any class is
    passed, the most probable passed class wins. Otherwise the most probable class among those without a
    threshold wins (among all classes when every class has one). Without thresholds this is the argmax. E.g.
    ``{"covid": 0.3}``: COVID when p(covid) >= 0.3, else the likelier of the other classes.
    """
    probs = np.asarray(probs, dtype=np.float64)
    passed = [i for i, c in enumerate(classes) if c in thresholds and probs[i] >= thresholds[c]]
    if not passed:
        passed = [i for i, c in enumerate(classes) if c not in thresholds] or list(range(len(classes)))
    return max(passed, key=lambda i: probs[i])


def resolve_device(device: str, backend: str) -> str:
    """``auto``/``cpu``/``cuda`` -> the device to run on; a :class:`ConfigError` for ``cuda`` without a usable
    GPU or with the ONNX backend (which this package runs on the CPU execution provider only)."""
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if backend == "onnx":
        if device == "cuda":
            raise ConfigError("--device cuda: the onnx backend runs on the CPU; use --backend torch for a GPU")
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available to torch here; use --device cpu or auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_threads() -> int:
    """Intra-op CPU threads when none are asked for: the CPUs not already busy, at most 4.

    More threads than idle CPUs oversubscribe: on a loaded 2-core machine, torch's default of 2 threads took
    513 ms for one prediction against 75 ms with 1 (OpenMP threads wait at barriers for descheduled siblings).
    At most 4, because a server runs several requests side by side, each with these threads.
    """
    from cxrscreen.training.threads import available_cpus, idle_cpus

    return min(4, idle_cpus(available_cpus()))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (N, C) -> probabilities (N, C) in float64, rows summing to 1."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


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


class Predictor:
    """A loaded classifier ready to predict and explain.

    Attributes: ``meta`` (:class:`ModelMeta`), ``classes`` (class names in output order), ``backend_name``
    (``torch`` or ``onnx``), ``model_path`` (the file it was loaded from), ``batch_size``, ``segmenter`` (the
    lung segmenter for lung-focused preprocessing; None = the bundled torch one), ``device`` (where the torch
    network runs), ``threads`` (intra-op CPU threads), ``thresholds`` ({class: probability} of :func:`decide`;
    empty = the most probable class).
    """

    def __init__(
        self,
        meta: ModelMeta,
        backend: InferenceBackend,
        backend_name: str,
        model_path: Path,
        torch_model: XrayClassifier | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        segmenter: Any = None,
        threads: int | None = None,
        device: str = "cpu",
        thresholds: dict[str, float] | None = None,
    ):
        self.meta = meta
        self.classes = list(meta.classes)
        self.backend = backend
        self.backend_name = backend_name
        self.model_path = model_path
        self.batch_size = batch_size
        self.segmenter = segmenter
        self._torch_model = torch_model
        self.threads = threads
        self.device = device
        self.thresholds = check_thresholds(meta.thresholds if thresholds is None else thresholds, self.classes)
        self._guard_runner: Any = None

    @property
    def known_limits(self) -> list[str]:
        """Kinds of images this model is known to get wrong (from its checkpoint), one sentence each."""
        return list(self.meta.known_limits)

    def decide(self, probs: np.ndarray) -> str:
        """The predicted class of one probability row (C,) under :attr:`thresholds` (see :func:`decide`)."""
        return self.classes[decide(probs, self.classes, self.thresholds)]

    @property
    def img_size(self) -> int:
        return self.meta.preprocessing.img_size

    def __repr__(self) -> str:
        return f"Predictor({self.meta.name} v{self.meta.version}, {self.meta.arch}, {self.backend_name}, classes={self.classes})"

    @property
    def guard_reads_whole_image(self) -> bool:
        """Whether the OOD guard needs the whole image (``thumbnails`` of :meth:`predict_prepared`)."""
        from cxrscreen.inference.ood import reads_whole_image

        return reads_whole_image(self.meta.ood)

    def find_lungs(self, image: np.ndarray) -> np.ndarray | None:
        """The lung mask of a decoded X-ray, None when no plausible lungs are found (this predictor's segmenter)."""
        from cxrscreen.models.segmenter import lung_finder

        return lung_finder(self.segmenter)(image)

    def prepare_input(self, image: np.ndarray) -> transforms.Prepared:
        """A decoded X-ray -> the network input with its frame: the one preparation predict and explain share."""
        return self.meta.preprocessing.prepare(image, self.find_lungs)

    def prepare(self, source: ImageSource, name: str | None = None) -> tuple[np.ndarray, np.ndarray | None, bool | None]:
        """Decode and preprocess one input -> (network input float32 (S, S) in [0, 1], the guard's whole-image
        input float32 (64, 64) or None when the guard does not need it, lungs_found or None)."""
        label = source_name(source, name)
        image = load_xray(source, label)
        prepared = self.prepare_input(image)
        return prepared.input, guard_thumbnail(image) if self.guard_reads_whole_image else None, prepared.lungs_found

    def predict_prepared(self, images: np.ndarray, thumbnails: np.ndarray | None = None) -> NetOutputs:
        """Prepared inputs float32 (N, S, S) in [0, 1] -> :class:`NetOutputs` (probabilities temperature-scaled).

        ``thumbnails``: the guard's whole-image inputs (N, 64, 64) in [0, 1]
        (:func:`cxrscreen.models.guard_net.guard_thumbnail`), needed by :meth:`ood_check` when
        :attr:`guard_reads_whole_image`. Runs in chunks of ``batch_size``. uint8 images must be divided by 255 first.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != (self.img_size, self.img_size):
            raise ConfigError(
                f"images: expected shape (N, {self.img_size}, {self.img_size}), got {tuple(images.shape)}"
            )
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise ConfigError("images: values must be in [0, 1] (divide uint8 images by 255)")
        if thumbnails is not None and len(thumbnails) != len(images):
            raise ConfigError(f"thumbnails: {len(thumbnails)} for {len(images)} images")
        chunks = [self.backend.run(images[start : start + self.batch_size, None])
                  for start in range(0, len(images), self.batch_size)]
        guard_features = None
        if thumbnails is not None and self.guard_reads_whole_image and len(thumbnails):
            guard_features = self.guard_runner(np.asarray(thumbnails, dtype=np.float32))
        if not chunks:
            return NetOutputs(np.zeros((0, len(self.classes))), np.zeros((0, 0), dtype=np.float32), guard_features)
        logits, features = (np.concatenate(parts) for parts in zip(*chunks))
        return NetOutputs(softmax(logits, self.meta.temperature), features, guard_features)

    @property
    def guard_runner(self) -> Any:
        """The guard's network, created on first use: ONNX Runtime for both backends (0.8 ms per image against 9 ms
        for torch eager, whose per-layer overhead dominates at 64 px; same features within 1e-4), torch when the
        cache folder for its one-time export cannot be written."""
        if self._guard_runner is None:
            from cxrscreen.inference.onnx_export import OnnxGuardRunner

            try:
                self._guard_runner = OnnxGuardRunner(self.threads)
            except OSError:
                from cxrscreen.models.guard_net import torch_guard_features

                self._guard_runner = torch_guard_features
        return self._guard_runner

    def ood_check(self, outputs: NetOutputs) -> tuple[np.ndarray, np.ndarray | None]:
        """(in_distribution bool (N,), scores (N,) or None) from the model's OOD guard; all True without a guard."""
        if not self.meta.ood:
            return np.ones(len(outputs.probs), dtype=bool), None
        from cxrscreen.inference.ood import accepts, ood_scores

        if self.guard_reads_whole_image:
            if outputs.guard_features is None:
                raise ConfigError("this model's OOD guard reads the whole images: pass thumbnails to predict_prepared")
            scores = ood_scores(outputs.guard_features, self.meta.ood)
        else:
            scores = ood_scores(outputs.features, self.meta.ood)
        return accepts(scores, self.meta.ood), scores

    def _results(
        self, names: list[str], images: np.ndarray, thumbnails: np.ndarray | None, lungs: list[bool | None]
    ) -> list[Prediction]:
        outputs = self.predict_prepared(images, thumbnails)
        probs = outputs.probs
        accepted, scores = self.ood_check(outputs)
        results = []
        for i, name in enumerate(names):
            probabilities = {c: float(p) for c, p in zip(self.classes, probs[i])}
            top = self.decide(probs[i])
            results.append(
                Prediction(
                    source=name,
                    label=top if accepted[i] else OUT_OF_DISTRIBUTION_LABEL,
                    probabilities=probabilities,
                    in_distribution=bool(accepted[i]),
                    ood_score=None if scores is None else float(scores[i]),
                    lungs_found=lungs[i],
                    known_limits=self.known_limits,
                )
            )
        return results

    @overload
    def predict(self, source: list[ImageSource] | tuple[ImageSource, ...], name: None = None) -> list[Prediction | PredictionFailure]: ...

    @overload
    def predict(self, source: ImageSource, name: str | None = None) -> Prediction: ...

    def predict(self, source, name=None):
        """Predict one image (path, bytes, PIL image or array). Raises a :class:`CxrError` if it cannot be read.

        A list or tuple of inputs is passed to :meth:`predict_batch` and gives its list of results."""
        if isinstance(source, (list, tuple)):
            if name is not None:
                raise ConfigError("predict: name= is for one image; pass names= to predict_batch for a list")
            return self.predict_batch(source)
        label = source_name(source, name)
        image, thumbnail, lungs_found = self.prepare(source, label)
        return self._results([label], image[None], None if thumbnail is None else thumbnail[None], [lungs_found])[0]

    def predict_batch(
        self, sources: Sequence[ImageSource], names: Sequence[str] | None = None
    ) -> list[Prediction | PredictionFailure]:
        """Predict many inputs; one result per input, in order. An input that cannot be read gives a
        :class:`PredictionFailure` (source + reason) and the others are still predicted."""
        if names is not None and len(names) != len(sources):
            raise ConfigError(f"names: {len(names)} names for {len(sources)} sources")
        results: list[Prediction | PredictionFailure | None] = [None] * len(sources)
        for start in range(0, len(sources), self.batch_size):
            chunk_ok: list[int] = []
            images: list[np.ndarray] = []
            thumbnails: list[np.ndarray | None] = []
            lungs: list[bool | None] = []
            for index in range(start, min(start + self.batch_size, len(sources))):
                name = source_name(sources[index], None if names is None else names[index])
                try:
                    image, thumbnail, lungs_found = self.prepare(sources[index], name)
                except CxrError as exc:
                    results[index] = PredictionFailure(name, failure_reason(exc, name))
                    continue
                chunk_ok.append(index)
                images.append(image)
                thumbnails.append(thumbnail)
                lungs.append(lungs_found)
            if chunk_ok:
                chunk_names = [source_name(sources[i], None if names is None else names[i]) for i in chunk_ok]
                thumbs = None if thumbnails[0] is None else np.stack(thumbnails)
                for index, prediction in zip(chunk_ok, self._results(chunk_names, np.stack(images), thumbs, lungs)):
                    results[index] = prediction
        return results  # type: ignore[return-value]

    @property
    def torch_model(self) -> XrayClassifier:
        """The torch network (Grad-CAM needs gradients). Loaded on first use for the ONNX backend."""
        if self._torch_model is None:
            if self.model_path.suffix.lower() == ".onnx":
                raise ModelError(
                    f"{self.model_path}: Grad-CAM needs the torch checkpoint (.pt); an .onnx file has no gradients"
                )
            self._torch_model, _ = load_checkpoint(self.model_path)
        return self._torch_model

    def explain(self, source: ImageSource, target: str | None = None, name: str | None = None) -> Explanation:
        """Grad-CAM of ``target`` (a class name; None = the class :meth:`predict` gives, thresholds included) for
        one image, computed on exactly the input that :meth:`predict` scores."""
        from cxrscreen.explain.gradcam import GradCam
        from cxrscreen.explain.overlay import overlay_png

        check_target(target, self.classes)
        original = load_xray(source, source_name(source, name))
        prepared = self.prepare_input(original)
        if target is None:
            target = self.decide(self.predict_prepared(prepared.input[None]).probs[0])
        heatmaps, _ = GradCam(self.torch_model)(torch.from_numpy(prepared.input)[None, None], self.classes.index(target))
        heatmap = np.clip(prepared.to_original(heatmaps[0]), 0.0, 1.0)
        return Explanation(heatmap=heatmap, overlay_png=overlay_png(original, heatmap), target=target, prepared=prepared)


def check_target(target: str | None, classes: list[str]) -> None:
    """A :class:`ConfigError` unless ``target`` is None or one of ``classes``."""
    if target is not None and target not in classes:
        raise ConfigError(f"--target {target!r} is not one of the model's classes: {', '.join(classes)}")


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """A model file from a path: None -> the bundled default; a run directory -> ``RUN/best.pt``."""
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise ModelError(
                f"no bundled model found at {DEFAULT_MODEL}; pass a model file with --model "
                "(a checkpoint .pt, a run directory or an exported .onnx)"
            )
        return DEFAULT_MODEL
    model_path = Path(path)
    if model_path.is_dir():
        best = model_path / "best.pt"
        if not best.is_file():
            raise ModelError(f"{model_path}: run directory holds no best.pt")
        return best
    if not model_path.exists():
        raise ModelError(f"{model_path}: model file not found")
    return model_path


def load_predictor(
    path: str | os.PathLike | None = None,
    backend: str = "torch",
    device: str = "auto",
    threads: int | None = None,
    thresholds: dict[str, float] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    channels_last: bool = True,
    onnx_optimization: str = "all",
) -> Predictor:
    """Load a model for prediction.

    ``path``: a checkpoint (``.pt``), a run directory (its ``best.pt``), an exported ``.onnx`` (ONNX backend only)
    or None for the bundled default. ``backend``: ``torch`` (eager) or ``onnx`` (ONNX Runtime; a checkpoint is
    exported once to a cache file). ``device``: ``auto`` (a CUDA GPU when torch sees one, else the CPU), ``cpu``
    or ``cuda`` (refused when no GPU is available, and for the onnx backend, which runs on the CPU).
    ``threads``: intra-op CPU threads (None: :func:`default_threads`). ``thresholds``: {class: probability}
    decision thresholds (rule in :func:`decide`; None: the operating point stored in the model, if any, else
    the most probable class). ``channels_last``: torch memory layout (faster for EfficientNet-Lite's depthwise
    convolutions on CPU, see benchmarks/infer.py).
    ``onnx_optimization``: ONNX Runtime graph optimisation level, ``all``/``extended``/``basic``/``disabled``.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    run_on = resolve_device(device, backend)
    threads = threads or default_threads()
    model_path = resolve_model_path(path)
    is_onnx = model_path.suffix.lower() == ".onnx"
    if backend == "torch":
        if is_onnx:
            raise ConfigError(f"{model_path}: an .onnx model needs --backend onnx")
        torch.set_num_threads(threads)
        model, meta = load_checkpoint(model_path)
        check_ood_guard(meta, model_path)
        return Predictor(meta, TorchBackend(model, channels_last, run_on), "torch", model_path, model, batch_size,
                         threads=threads, device=run_on, thresholds=thresholds)
    from cxrscreen.inference.onnx_export import OnnxRuntimeBackend, cached_onnx_export, read_onnx_meta

    onnx_path = model_path if is_onnx else cached_onnx_export(model_path)
    meta = read_onnx_meta(onnx_path)
    check_ood_guard(meta, model_path)
    runner = OnnxRuntimeBackend(onnx_path, threads=threads, optimization=onnx_optimization)
    segmenter = None
    if meta.preprocessing.needs_lungs:
        from cxrscreen.models.segmenter import load_segmenter

        segmenter = load_segmenter(backend="onnx")
    return Predictor(meta, runner, "onnx", model_path, None, batch_size, segmenter, threads, thresholds=thresholds)


def check_ood_guard(meta: ModelMeta, path: Path) -> None:
    """Refuse, at load time, a model whose OOD guard this version cannot use."""
    if meta.ood:
        from cxrscreen.inference.ood import check_guard

        try:
            check_guard(meta.ood)
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from None
