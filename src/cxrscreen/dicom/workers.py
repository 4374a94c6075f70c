"""Where the node screens: in worker processes, one predictor each (:class:`ScreeningPool`), or in its own process
(:class:`LocalScreening`: a screener that cannot be rebuilt from a model file, or ``processes=0``).

Screening one image is mostly pure Python (highdicom building the SR and SC, pydicom encoding them) besides the
networks; under one GIL, two screening threads barely overlap and also slow the threads that receive and send.
Worker processes put every CPU to work. A worker gets the path of a spooled object and hands back the outcome
(without datasets) and each result as encoded DICOM file bytes; the node writes them to the spool, keeps the
journal and sends, so the spool's guarantees are the same wherever screening ran.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

from cxrscreen.dicom.screen import DicomScreener, ScreenOutcome
from cxrscreen.errors import CxrError


@dataclass
class EncodedOutcome:
    """A :class:`ScreenOutcome` without its datasets (``results`` empty) and ``files``: {kind: DICOM file bytes}."""

    outcome: ScreenOutcome
    files: dict[str, bytes] = field(default_factory=dict)


def screen_encoded(screener: DicomScreener, path: Path, name: str) -> EncodedOutcome:
    """Screen the DICOM file at ``path`` (no observers told: the caller reports) and encode each result."""
    outcome = screener.screen_quietly(path.read_bytes(), name)
    files = {}
    for kind, ds in outcome.results.items():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files[kind] = buffer.getvalue()
    return EncodedOutcome(replace(outcome, results={}), files)


@dataclass(frozen=True)
class ScreenerRecipe:
    """What a worker process needs to load the same screener: the model file, backend, decision thresholds and
    result kinds (the predictor itself, with its sessions and locks, cannot be sent to another process)."""

    model_path: Path
    backend: str
    thresholds: dict[str, float]
    batch_size: int
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, screener: DicomScreener) -> "ScreenerRecipe | None":
        """The recipe of ``screener``, or None when its predictor is not one loaded from a file on the CPU."""
        from cxrscreen.inference.predictor import Predictor

        predictor = screener.predictor
        if not isinstance(predictor, Predictor) or predictor.device != "cpu":
            return None
        return cls(Path(predictor.model_path), predictor.backend_name, dict(predictor.thresholds),
                   predictor.batch_size, screener.outputs)

    def load(self) -> DicomScreener:
        """The screener, warmed up, its networks on one thread each (the workers share the CPUs between them;
        torch's default, all CPUs per process, would make the workers' threads fight)."""
        from cxrscreen.inference.predictor import load_predictor

        predictor = load_predictor(self.model_path, backend=self.backend, device="cpu", threads=1,
                                   thresholds=self.thresholds, batch_size=self.batch_size)
        screener = DicomScreener(predictor, self.outputs)
        screener.warm_up()
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)
        return screener


_worker_screener: DicomScreener | None = None


def _start_worker(recipe: ScreenerRecipe) -> None:
    global _worker_screener
    _exit_with_parent()
    _worker_screener = recipe.load()


def _exit_with_parent() -> None:
    """End this worker when the node that started it is gone: a node killed outright (kill -9, out of memory)
    cannot shut its pool down, and its workers, each holding a model, would otherwise wait for work forever."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), name="exit-with-parent", daemon=True).start()


def _ready() -> int:
    import time

    time.sleep(0.05)  # long enough that each warm-up task lands on its own process
    return os.getpid()


def _work(path: str, name: str) -> EncodedOutcome:
    assert _worker_screener is not None, "worker started without its screener"
    return screen_encoded(_worker_screener, Path(path), name)


class LocalScreening:
    """Screening in this process, on the caller's thread."""

    def __init__(self, screener: DicomScreener):
        self.screener = screener
        self.workers = max(1, getattr(screener.predictor, "workers", 1))  # threads that screen side by side

    def start(self) -> None:
        self.screener.warm_up()

    def screen(self, path: Path, name: str) -> EncodedOutcome:
        return screen_encoded(self.screener, path, name)

    def close(self) -> None:
        pass


class ScreeningPool:
    """Screening in ``processes`` worker processes (spawned: the parent's torch and ONNX Runtime thread pools do
    not survive a fork), each with the screener ``recipe`` loads; :meth:`screen` blocks its caller's thread."""

    def __init__(self, recipe: ScreenerRecipe, processes: int):
        self.recipe = recipe
        self.workers = max(1, processes)
        self._pool: ProcessPoolExecutor | None = None
        self._restart = threading.Lock()

    def start(self) -> None:
        """Start the workers and wait until each has loaded its networks (the first image is not late)."""
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(self.recipe,))
        for future in [self._pool.submit(_ready) for _ in range(self.workers)]:
            future.result()

    def screen(self, path: Path, name: str) -> EncodedOutcome:
        pool = self._pool
        assert pool is not None, "start() first"
        try:
            return pool.submit(_work, str(path), name).result()
        except BrokenProcessPool:
            # A worker died (killed, out of memory), and the pool with it: the first thread to see it starts a
            # new one for what follows; what was being screened fails (the node sets it aside).
            with self._restart:
                if self._pool is pool:
                    self.close()
                    self.start()
            raise CxrError(f"{name}: a screening worker process died") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def screening_for(screener: DicomScreener, processes: int | None) -> LocalScreening | ScreeningPool:
    """Worker processes (``processes``; None: as many as the predictor's workers) when the screener can be rebuilt
    from its model file, else screening in this process."""
    recipe = ScreenerRecipe.of(screener)
    count = max(1, getattr(screener.predictor, "workers", 1)) if processes is None else processes
    if recipe is None or count == 0:
        return LocalScreening(screener)
    return ScreeningPool(recipe, count)
