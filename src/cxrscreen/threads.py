"""CPU thread settings for train, evaluate and predict, chosen from the CPUs this process may use."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from cxrscreen.errors import ConfigError


@dataclass(frozen=True)
class ThreadSettings:
    """``torch_threads``: intra-op threads of torch; ``loader_workers``: DataLoader worker processes;
    ``decode_workers``: threads decoding images when the prepared-image cache misses."""

    cpus: int
    torch_threads: int
    loader_workers: int
    decode_workers: int


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def choose_thread_settings(num_threads: int | None = None) -> ThreadSettings:
    """Settings for this machine, or for ``num_threads`` CPUs when given.

    By default torch gets every CPU this process may use. Not the idle ones by the 1-minute load average: it lags
    by a minute, so right after another command (or a predictor's workers in the same process) a whole training
    ran on one thread with the other core idle (issue 26; predict stopped counting the load for the same reason,
    :func:`cxrscreen.inference.options.default_threads`). Pass ``num_threads`` to leave CPUs to other work.
    Batches come from in-memory uint8 arrays and are augmented as tensor ops in the main process, so the
    DataLoader needs no workers. Decoding (cache misses) uses a thread pool of at most 8 (PIL releases the GIL).
    """
    if num_threads is not None and num_threads < 1:
        raise ConfigError(f"--num-threads must be at least 1, got {num_threads}")
    cpus = num_threads or available_cpus()
    return ThreadSettings(cpus=cpus, torch_threads=cpus, loader_workers=0, decode_workers=min(cpus, 8))


def configure_threads(num_threads: int | None = None) -> ThreadSettings:
    """Choose settings (see :func:`choose_thread_settings`) and apply them to torch; returns them."""
    import torch  # here, so that data.cache can choose decode workers without loading torch

    settings = choose_thread_settings(num_threads)
    torch.set_num_threads(settings.torch_threads)
    return settings


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Intra-op threads of each of ``workers`` threads running networks side by side, so that workers x threads
    does not exceed the CPUs (``cpus``, default :func:`available_cpus`): at least 1."""
    return max(1, (cpus or available_cpus()) // max(1, workers))


@contextmanager
def worker_threads(workers: int) -> Iterator[None]:
    """While ``workers`` threads run networks side by side (the prepared-image cache's decode workers): torch's
    intra-op threads lowered to :func:`threads_per_worker` (never raised), restored on exit, so that a torch network
    does not multiply its threads with the workers; what :func:`configure_threads` chose for the training step
    comes back after. Touches torch only when it is imported already (no torch network can run otherwise); ONNX
    Runtime sessions carry their own thread count."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, threads_per_worker(workers)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
