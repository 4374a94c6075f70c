"""While the prepared-image cache's decode workers run a network side by side, torch's intra-op threads are divided
among them, not multiplied (issue 17), and the training step's setting comes back afterwards."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.transforms import CallableLungFinder, Preprocessing
from cxrscreen.threads import available_cpus, threads_per_worker, worker_threads


def test_threads_per_worker_divides_the_cpus():
    assert [threads_per_worker(workers, cpus=8) for workers in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert threads_per_worker(2, cpus=1) == 1


def test_cache_workers_run_torch_on_their_share_of_the_cpus(small_radiography: Path, tmp_path):
    cpus = available_cpus()
    if cpus < 2:
        pytest.skip("one CPU: no worker can oversubscribe it")
    seen: dict[str, int] = {}

    def find_lungs(images):
        # What a torch segmenter in this worker would run on.
        seen[threading.current_thread().name] = torch.get_num_threads()
        return [np.ones(image.shape, dtype=bool) for image in images]

    paths = sorted(small_radiography.glob("*/images/*.jpg"))[:32]
    before = torch.get_num_threads()
    torch.set_num_threads(cpus)  # as configure_threads leaves it for the training step on an idle machine
    try:
        prepared = load_prepared(paths, Preprocessing(img_size=32, lung_mode="crop"), cache_dir=tmp_path,
                                 progress=False, workers=2, lungs=CallableLungFinder(find_lungs, "test"))
        assert len(prepared.ok) == len(paths)
        assert len(seen) == 2 and all(name.startswith("cxr-decode") for name in seen)
        assert set(seen.values()) == {threads_per_worker(2)}
        assert torch.get_num_threads() == cpus
        with worker_threads(cpus):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == cpus
        torch.set_num_threads(1)  # a busy machine's setting is never raised
        with worker_threads(1):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
