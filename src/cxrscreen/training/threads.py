"""CPU thread settings for train, evaluate and predict, chosen from the CPUs this process may use."""

from __future__ import annotations

import os
from dataclasses import dataclass

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

    Batches come from in-memory uint8 arrays and are augmented as tensor ops in the main process, so the
    DataLoader needs no workers: every CPU goes to torch's intra-op threads. Decoding (cache misses) uses a
    thread pool of at most 8 (PIL releases the GIL; more threads only contend for disk).
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
