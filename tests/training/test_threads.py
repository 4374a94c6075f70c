"""Thread settings follow the CPUs this process may use, and can be overridden."""

from __future__ import annotations

import os

import pytest
import torch

from cxrscreen.errors import ConfigError
from cxrscreen import threads
from cxrscreen.threads import available_cpus, choose_thread_settings, configure_threads


def test_settings_follow_cpu_affinity_and_load(monkeypatch):
    assert available_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    settings = choose_thread_settings()
    assert (settings.cpus, settings.torch_threads, settings.decode_workers, settings.loader_workers) == (6, 6, 6, 0)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (4.2, 0.0, 0.0))
    assert choose_thread_settings().torch_threads == 2
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (11.0, 0.0, 0.0))
    assert choose_thread_settings().torch_threads == 1
    assert choose_thread_settings(3).torch_threads == 3


def test_override_is_applied_to_torch():
    before = torch.get_num_threads()
    try:
        settings = configure_threads(1)
        assert (settings.torch_threads, settings.decode_workers, torch.get_num_threads()) == (1, 1, 1)
        assert choose_thread_settings(32).decode_workers == 8
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="--num-threads"):
        choose_thread_settings(0)
