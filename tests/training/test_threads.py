"""Thread settings follow the CPUs this process may use, and can be overridden."""

from __future__ import annotations

import os

import pytest
import torch

from cxrscreen.errors import ConfigError
from cxrscreen import threads
from cxrscreen.threads import available_cpus, choose_thread_settings, configure_threads


def test_settings_follow_cpu_affinity_not_the_load_average(monkeypatch):
    """Issue 26: the 1-minute load average lags; right after another command a whole training ran on one thread."""
    assert available_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(6)))
    for load in (0.3, 4.2, 11.0):
        monkeypatch.setattr(threads.os, "getloadavg", lambda load=load: (load, load, load))
        settings = choose_thread_settings()
        assert (settings.cpus, settings.torch_threads, settings.decode_workers, settings.loader_workers) == (6, 6, 6, 0)
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


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_while_they_wait_unless_the_user_says_otherwise(given, expected):
    """Training takes every CPU; on a busy machine, OpenMP threads spinning at barriers made 2 threads 2.8x slower than
    one (issue 26): importing cxrscreen, before torch, makes them sleep, and a user's own setting wins."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    script = "import os, cxrscreen; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == expected
