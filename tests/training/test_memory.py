"""Freed memory goes back to the system after a phase that made and dropped many small blocks (glibc)."""

from __future__ import annotations

import ctypes.util

import numpy as np
import pytest

from cxrscreen.memory import give_back_memory


def resident_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to ask")
def test_freed_heap_blocks_are_given_back() -> None:
    give_back_memory()
    # 200 MB in 4 KB arrays (from the heap, not mapped one by one), then all but every 50th freed: the heap keeps
    # the pages between the survivors until it is trimmed.
    blocks = [np.ones(4096, dtype=np.uint8) for _ in range(50_000)]
    survivors = blocks[::50]
    del blocks
    before = resident_mb()
    give_back_memory()
    after = resident_mb()
    assert before - after > 100, (before, after)
    assert all(int(block.sum()) == 4096 for block in survivors)  # what is still used is untouched
