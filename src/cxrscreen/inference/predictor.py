"""Predict and explain with a trained classifier, through torch or ONNX Runtime.

:func:`load_predictor` turns a model file (checkpoint ``.pt``, run directory, or exported ``.onnx``) into a
:class:`Predictor`. Every path - one image, a batch, already-prepared arrays - ends in the same post-processing:
logits / ``meta.temperature`` -> softmax, and the out-of-distribution guard when the model carries one
(``meta.ood``: on the whole image seen through :mod:`cxrscreen.guard.network`, or, for models from before it, on
the classifier's penultimate features). A screening aid, not a diagnosis: every result carries
:data:`cxrscreen.SCREENING_NOTICE`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar, overload

import numpy as np

from cxrscreen.data import transforms
from cxrscreen.data.transforms import FindLungsBatch, LungFinder
from cxrscreen.data.imageio import ImageSource
from cxrscreen.errors import ConfigError, ModelError
from cxrscreen.guard.ppca import accepts, check_guard, ood_scores, reads_whole_image
from cxrscreen.inference.options import (  # noqa: F401 - re-exported: the CLI and notebooks import them from here
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEVICES,
    check_target,
    check_thresholds,
    chunk_size,
    Decision,
    decide,
    default_threads,
    explain_decision,
    parse_thresholds,
    resolve_backend,
    resolve_device,
    single_threaded_libraries,
)
from cxrscreen.inference import explaining
from cxrscreen.inference.backends import InferenceBackend, NetOutputs, TorchBackend, softmax  # noqa: F401
from cxrscreen.inference.preparation import PreparedBatch, decode_and_prepare, failure_reason, source_name
from cxrscreen.inference.results import Explanation, Prediction, PredictionFailure
from cxrscreen.models.bundled import WEIGHTS_DIR, bundled_model, bundled_models, is_bundled_name
from cxrscreen.run_dir import RunDir

# torch, ONNX Runtime, the lung segmenter, the guard's network and Grad-CAM are imported where first used, for
# start-up time: the ONNX backend with a warm cache imports no torch, nor the exporter (tests/inference/test_startup.py).
if TYPE_CHECKING:  # torch is imported only where a network runs in it
    from cxrscreen.models.checkpoint import ModelMeta
    from cxrscreen.models.registry import XrayClassifier

DEFAULT_MODEL = WEIGHTS_DIR / "default.pt"  # the bundled model called "default" (models/weights/bundled.json)
OUT_OF_DISTRIBUTION_LABEL = "not a chest X-ray?"
T = TypeVar("T")
R = TypeVar("R")


class Predictor:
    """A loaded classifier ready to predict and explain.

    Attributes: ``meta`` (:class:`ModelMeta`), ``classes`` (class names in output order), ``backend_name``
    (``torch`` or ``onnx``: the engine ``auto`` chose), ``model_path`` (the file it was loaded from), ``batch_size``,
    ``lungs`` (the :class:`LungFinder` of lung-focused preprocessing, handed in by :func:`load_predictor`:
    :func:`cxrscreen.lungs.finder.load_lung_finder`, the one the training cache and the audit use; None for a model
    that does not look for the lungs), ``device`` (where the torch network runs), ``threads`` (CPU threads: batches are prepared and scored by that many workers side by side,
    each network single-threaded, see :func:`cxrscreen.inference.options.default_threads`), ``thresholds``
    ({class: probability} of :func:`decide`; empty = the most probable class), ``guard_graph`` (the OOD guard
    network's ONNX export, None: found or made on first use).
    """

    def __init__(
        self,
        meta: ModelMeta,
        backend: InferenceBackend,
        backend_name: str,
        model_path: Path,
        torch_model: XrayClassifier | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lungs: LungFinder | None = None,
        threads: int | None = None,
        device: str = "cpu",
        thresholds: dict[str, float] | None = None,
        guard_graph: Path | None = None,
    ):
        self.meta = meta
        self.classes = list(meta.classes)
        self.backend = backend
        self.backend_name = backend_name
        self.model_path = model_path
        self.batch_size = batch_size
        self.lungs = lungs
        self._torch_model = torch_model
        self.threads = threads
        self.device = device
        self.thresholds = check_thresholds(meta.thresholds if thresholds is None else thresholds, self.classes)
        self.guard_graph = guard_graph
        self._guard_runner: Any = None
        self._guard_arrays: tuple[dict, dict] | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Networks made on first use (exports included) are made once, whichever worker or request needs them
        # first: torch's exporter and tracer hold global state and fail when two threads use them at once.
        self._first_use = threading.Lock()

    def single_threaded(self):
        """The scope of this predictor's work: parallel over images (:attr:`workers`), each network and library
        single-threaded (:func:`single_threaded_libraries`), the process's settings restored afterwards."""
        return single_threaded_libraries(opencv=self.meta.preprocessing.needs_lungs)

    @property
    def known_limits(self) -> list[str]:
        """Kinds of images this model is known to get wrong (from its checkpoint), one sentence each."""
        return list(self.meta.known_limits)

    def decide(self, probs: np.ndarray) -> str:
        """The predicted class of one probability row (C,) under :attr:`thresholds` (see :func:`decide`)."""
        return self.classes[decide(probs, self.classes, self.thresholds)]

    def decision(self, probs: np.ndarray) -> Decision:
        """How one probability row (C,) is decided under :attr:`thresholds`: the rule and the cut-off."""
        return explain_decision(probs, self.classes, self.thresholds)

    def decided_class(self, prediction: Prediction) -> str:
        """The class ``prediction`` decided under the thresholds, the OOD guard aside (its label may be
        "not a chest X-ray?"): the target :meth:`explain` would choose, without scoring the image again."""
        return self.decide(np.array([prediction.probabilities[name] for name in self.classes]))

    @property
    def img_size(self) -> int:
        return self.meta.preprocessing.img_size

    def __repr__(self) -> str:
        return f"Predictor({self.meta.name} v{self.meta.version}, {self.meta.arch}, {self.backend_name}, classes={self.classes})"

    @property
    def guard_reads_whole_image(self) -> bool:
        """Whether the OOD guard needs the whole image (``thumbnails`` of :meth:`predict_prepared`)."""
        return reads_whole_image(self.meta.ood)

    @property
    def workers(self) -> int:
        """Batches prepared and scored side by side (:attr:`threads`)."""
        return max(1, self.threads or 1)

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterable[R]:
        """``fn`` over ``items`` in order, on the workers when there is more than one item to share."""
        if self.workers == 1 or len(items) < 2:
            return map(fn, items)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cxr-predict")
        return self._pool.map(fn, items)

    @property
    def find_lungs(self) -> FindLungsBatch | None:
        """The batch finder of :attr:`lungs` (its network loaded on first use), None without lung-focused
        preprocessing; preparation calls it directly, never back through the predictor."""
        if self.lungs is None or not self.meta.preprocessing.needs_lungs:
            return None
        with self._first_use:  # the torch engine's first load traces the network: one thread at a time
            return self.lungs.load()

    def prepare_input(self, image: np.ndarray) -> transforms.Prepared:
        """A decoded X-ray -> the network input with its frame: the one preparation predict and explain share."""
        return self.meta.preprocessing.prepare_many([image], self.find_lungs)[0]

    def prepare_sources(self, sources: Sequence[ImageSource], names: Sequence[str]) -> PreparedBatch:
        """Decode and prepare a batch of inputs (:func:`cxrscreen.inference.preparation.decode_and_prepare`)."""
        return decode_and_prepare(sources, names, self.meta.preprocessing, self.find_lungs, self.guard_reads_whole_image)

    def predict_prepared(self, images: np.ndarray, thumbnails: np.ndarray | None = None) -> NetOutputs:
        """Prepared inputs float32 (N, S, S) in [0, 1] -> :class:`NetOutputs` (probabilities temperature-scaled).

        ``thumbnails``: the guard's whole-image inputs (N, 64, 64) in [0, 1]
        (:func:`cxrscreen.guard.network.guard_thumbnail`), needed by :meth:`ood_check` when
        :attr:`guard_reads_whole_image`. Runs in chunks of ``batch_size``, shared by the workers. uint8 images
        are converted by :func:`cxrscreen.data.imageio.to_float` first.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != (self.img_size, self.img_size):
            raise ConfigError(f"images: expected shape (N, {self.img_size}, {self.img_size}), got {tuple(images.shape)}")
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise ConfigError("images: values must be in [0, 1] (convert uint8 images with cxrscreen.data.imageio.to_float)")
        if thumbnails is not None and len(thumbnails) != len(images):
            raise ConfigError(f"thumbnails: {len(thumbnails)} for {len(images)} images")
        step = chunk_size(len(images), self.workers, self.batch_size)
        starts = list(range(0, len(images), step))
        guard_features = None
        with self.single_threaded():
            chunks = list(self._map(lambda start: self.backend.run(images[start : start + step, None]), starts))
            if thumbnails is not None and self.guard_reads_whole_image and len(thumbnails):
                thumbs = np.asarray(thumbnails, dtype=np.float32)
                guard_features = np.concatenate(list(self._map(lambda start: self.guard_runner(thumbs[start : start + step]), starts)))
        if not chunks:
            return NetOutputs(np.zeros((0, len(self.classes))), np.zeros((0, 0), dtype=np.float32), guard_features)
        logits, features = (np.concatenate(parts) for parts in zip(*chunks))
        return NetOutputs(softmax(logits, self.meta.temperature), features, guard_features)

    @property
    def guard_runner(self) -> Any:
        """The guard's network, created on first use: ONNX Runtime for both backends (0.8 ms per image against 9 ms
        for torch eager, whose per-layer overhead dominates at 64 px; same features within 1e-4), torch when the
        cache folder for its one-time export cannot be written. Single-threaded, like the classifier."""
        with self._first_use:
            if self._guard_runner is None:
                from cxrscreen.guard.onnx import OnnxGuardRunner

                try:
                    self._guard_runner = OnnxGuardRunner(1, self.guard_graph)
                except OSError:
                    from cxrscreen.guard.network import torch_guard_features

                    self._guard_runner = torch_guard_features
        return self._guard_runner

    def ood_check(self, outputs: NetOutputs) -> tuple[np.ndarray, np.ndarray | None]:
        """(in_distribution bool (N,), scores (N,) or None) from the model's OOD guard; all True without a guard."""
        if not self.meta.ood:
            return np.ones(len(outputs.probs), dtype=bool), None
        if self.guard_reads_whole_image and outputs.guard_features is None:
            raise ConfigError("this model's OOD guard reads the whole images: pass thumbnails to predict_prepared")
        with self.single_threaded():
            scores = ood_scores(outputs.features if not self.guard_reads_whole_image else outputs.guard_features, self.guard)
        return accepts(scores, self.meta.ood), scores

    @property
    def guard(self) -> dict[str, Any]:
        """``meta.ood`` with its matrices as arrays, converted once per guard: from the checkpoint's lists, the
        conversion cost 140 ms per batch, more than the guard's network."""
        if self._guard_arrays is None or self._guard_arrays[0] is not self.meta.ood:
            arrays = {key: np.asarray(value) if isinstance(value, list) else value for key, value in self.meta.ood.items()}
            self._guard_arrays = (self.meta.ood, arrays)
        return self._guard_arrays[1]

    def score_batch(self, names: Sequence[str], batch: PreparedBatch, outputs: NetOutputs | None = None) -> list[Prediction]:
        """The predictions of a prepared batch (its ``positions``, in order), from ``outputs`` when it has them."""
        if not batch.positions:
            return []
        if outputs is None:
            outputs = self.net_outputs(batch.inputs, batch.thumbnails)[0]
        accepted, scores = self.ood_check(outputs)
        results = []
        for i, position in enumerate(batch.positions):
            decision = self.decision(outputs.probs[i]) if accepted[i] else None
            results.append(
                Prediction(
                    source=names[position],
                    label=decision.label if decision else OUT_OF_DISTRIBUTION_LABEL,
                    decision=decision,
                    probabilities={c: float(p) for c, p in zip(self.classes, outputs.probs[i])},
                    in_distribution=bool(accepted[i]),
                    ood_score=None if scores is None else float(scores[i]),
                    lungs_found=batch.lungs_found[i],
                    known_limits=self.known_limits,
                )
            )
        return results

    def net_outputs(self, images: np.ndarray, thumbnails: np.ndarray | None,
                    maps: bool = False) -> tuple[NetOutputs, np.ndarray | None]:
        """:meth:`predict_prepared` on this worker alone (the batch is already one worker's share), and with
        ``maps`` every class's Grad-CAM map (N, C, S, S) from the same pass (the backend must
        :attr:`~InferenceBackend.explains`; None without ``maps``)."""
        logits, features, *class_maps = (self.backend.run_with_maps if maps else self.backend.run)(images[:, None])
        guard = self.guard_runner(thumbnails) if thumbnails is not None and self.guard_reads_whole_image else None
        return NetOutputs(softmax(logits, self.meta.temperature), features, guard), class_maps[0] if class_maps else None

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
        with self.single_threaded():
            batch = self.prepare_sources([source], [label])
            if batch.failures:
                raise batch.failures[0]
            return self.score_batch([label], batch)[0]

    def predict_batch(
        self, sources: Sequence[ImageSource], names: Sequence[str] | None = None
    ) -> list[Prediction | PredictionFailure]:
        """Predict many inputs; one result per input, in order. An input that cannot be read gives a
        :class:`PredictionFailure` (source + reason) and the others are still predicted. The inputs are shared
        by the workers in batches of at most ``batch_size``, each decoded, prepared and scored as a batch."""
        return list(self.predict_iter(sources, names))

    def predict_iter(
        self, sources: Sequence[ImageSource], names: Sequence[str] | None = None
    ) -> Iterator[Prediction | PredictionFailure]:
        """:meth:`predict_batch`, each result given as soon as it and those before it are ready: the workers take
        one batch after another without waiting for the caller (a folder streams at the rate of the whole set,
        not of a batch at a time), while the caller writes the results it has."""
        if names is not None and len(names) != len(sources):
            raise ConfigError(f"names: {len(names)} names for {len(sources)} sources")
        labels = [source_name(s, None if names is None else names[i]) for i, s in enumerate(sources)]
        step = chunk_size(len(sources), self.workers, self.batch_size)

        def run(start: int) -> list[Prediction | PredictionFailure]:
            chunk_names = labels[start : start + step]
            batch = self.prepare_sources(sources[start : start + step], chunk_names)
            results: list[Prediction | PredictionFailure | None] = [None] * len(chunk_names)
            for position, prediction in zip(batch.positions, self.score_batch(chunk_names, batch)):
                results[position] = prediction
            for position, error in batch.failures.items():
                results[position] = PredictionFailure(chunk_names[position], failure_reason(error, chunk_names[position]))
            return results  # type: ignore[return-value]

        with self.single_threaded():
            for chunk in self._map(run, range(0, len(sources), step)):
                yield from chunk

    @property
    def torch_model(self) -> XrayClassifier:
        """The torch network (Grad-CAM needs gradients). Loaded on first use for the ONNX backend."""
        if self._torch_model is None:
            if self.model_path.suffix.lower() == ".onnx":
                raise ModelError(
                    f"{self.model_path}: Grad-CAM needs the torch checkpoint (.pt); an .onnx file has no gradients"
                )
            from cxrscreen.models.checkpoint import load_checkpoint

            self._torch_model, _ = load_checkpoint(self.model_path)
        return self._torch_model

    def explain(self, source: ImageSource, target: str | None = None, name: str | None = None,
                overlay: bool = True) -> Explanation:
        """Grad-CAM of ``target`` (a class name; None = the class :meth:`predict` gives, thresholds included) for
        one image, computed on exactly the input that :meth:`predict` scores. ``overlay=False``: no overlay PNG is
        encoded (``overlay_png`` is empty), for callers that draw their own."""
        return explaining.explain(self, source, target, name, overlay)

    def predict_and_explain(self, source: ImageSource, name: str | None = None,
                            overlay: bool = True) -> tuple[Prediction, Explanation]:
        """:meth:`predict` and the :meth:`explain` of the class it decides (the OOD guard aside), from one
        preparation and, when the backend gives Grad-CAM maps, one forward pass."""
        return explaining.predict_and_explain(self, source, name, overlay)

def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """A model file from a path: None -> the bundled default; a bundled model's name (``cxrscreen models``) -> its
    file; a run directory -> ``RUN/best.pt``."""
    if path is not None and is_bundled_name(str(path)):
        return bundled_model(str(path)).path
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise ModelError(
                f"no bundled model found at {DEFAULT_MODEL}; pass a model file with --model "
                "(a checkpoint .pt, a run directory or an exported .onnx)"
            )
        return DEFAULT_MODEL
    model_path = Path(path)
    if model_path.is_dir():
        best = RunDir(model_path).best
        if not best.is_file():
            raise ModelError(f"{model_path}: run directory holds no {best.name}")
        return best
    if not model_path.exists():
        raise ModelError(f"{model_path}: model file not found (bundled models, by name: {', '.join(bundled_models())})")
    return model_path


def load_predictor(
    path: str | os.PathLike | None = None,
    backend: str = DEFAULT_BACKEND,
    device: str = "auto",
    threads: int | None = None,
    thresholds: dict[str, float] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    channels_last: bool = True,
    onnx_optimization: str = "all",
    lungs: LungFinder | None = None,
) -> Predictor:
    """Load a model for prediction.

    ``path``: a checkpoint (``.pt``), a run directory (its ``best.pt``), an exported ``.onnx`` (ONNX backend only)
    or None for the bundled default. ``backend``: ``auto`` (ONNX Runtime on the CPU, torch on a CUDA GPU: see
    :func:`resolve_backend`), ``torch`` (eager) or ``onnx`` (ONNX Runtime; a checkpoint is prepared once into the
    cache, :mod:`cxrscreen.inference.onnx_runtime`, after which loading and predicting import no torch).
    ``device``: ``auto`` (a CUDA GPU when torch sees one, else the CPU), ``cpu`` or ``cuda`` (refused when no GPU
    is available, and for the onnx backend, which runs on the CPU).
    ``threads``: CPU threads, spent as that many workers that prepare and score batches side by side, each
    network single-threaded (None: :func:`default_threads`, the usable CPUs up to 4). ``thresholds``: {class: probability}
    decision thresholds (rule in :func:`decide`; None: the operating point stored in the model, if any, else
    the most probable class). ``channels_last``: torch memory layout (faster for EfficientNet-Lite's depthwise
    convolutions on CPU, see benchmarks/infer.py).
    ``onnx_optimization``: ONNX Runtime graph optimisation level, ``all``/``extended``/``basic``/``disabled``.
    ``lungs``: the lung finder of a lung-focused model (None: :func:`cxrscreen.lungs.finder.load_lung_finder`'s,
    whichever backend runs the classifier, so that both backends, the audit and the training cache prepare a file
    alike).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    model_path = resolve_model_path(path)
    backend = resolve_backend(backend, device, model_path)
    run_on = resolve_device(device, backend)
    threads = threads or default_threads()
    is_onnx = model_path.suffix.lower() == ".onnx"
    if backend == "torch":
        if is_onnx:
            raise ConfigError(f"{model_path}: an .onnx model needs --backend onnx")
        from cxrscreen.models.checkpoint import load_checkpoint

        model, meta = load_checkpoint(model_path)
        check_ood_guard(meta, model_path)
        return Predictor(meta, TorchBackend(model, channels_last, run_on), "torch", model_path, model, batch_size,
                         lungs_for(meta, lungs), threads, run_on, thresholds)
    from cxrscreen.inference.onnx_runtime import OnnxRuntimeBackend, prepared_for_onnx

    prepared = None if is_onnx else prepared_for_onnx(model_path)
    runner = OnnxRuntimeBackend(model_path if prepared is None else prepared.graph, threads=1, optimization=onnx_optimization)
    meta = runner.meta if prepared is None else prepared.meta
    check_ood_guard(meta, model_path)
    return Predictor(meta, runner, "onnx", model_path, None, batch_size, lungs_for(meta, lungs), threads, thresholds=thresholds,
                     guard_graph=None if prepared is None else prepared.guard_graph)


def lungs_for(meta: ModelMeta, lungs: LungFinder | None) -> LungFinder | None:
    """``lungs``, or the one lung finder (:func:`cxrscreen.lungs.finder.load_lung_finder`) when the model's
    preprocessing looks for the lungs; None when it does not."""
    if lungs is not None or not meta.preprocessing.needs_lungs:
        return lungs
    from cxrscreen.lungs.finder import load_lung_finder  # the segmenter's modules: only for lung-focused models

    return load_lung_finder()


def check_ood_guard(meta: ModelMeta, path: Path) -> None:
    """Refuse, at load time, a model whose OOD guard this version cannot use."""
    if meta.ood:
        try:
            check_guard(meta.ood)
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from None
