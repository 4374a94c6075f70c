"""Prepared images on disk (cxrscreen.data.stack): indexing as numpy's, and memory that does not grow with the
collection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrscreen.data.stack import ImageStack, StackWriter


def written(images: np.ndarray, directory: Path, order: np.ndarray) -> ImageStack:
    """``images`` written in the shuffled ``order`` (as the cache's workers finish), viewed in their own order."""
    writer = StackWriter(len(images), images.shape[1], directory)
    for row in order:
        writer.put(int(row), images[row])
    return writer.stack(np.arange(len(images)))


def test_a_stack_reads_what_numpy_indexing_gives(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    stack = written(images, tmp_path, rng.permutation(20))
    assert stack.shape == images.shape and stack.dtype == np.uint8 and len(stack) == 20
    picks = rng.integers(0, 20, 15)
    mask = rng.random(20) < 0.5
    for key in (3, -1, slice(2, 9), slice(None, None, -3), picks, mask, [], np.array([19, 0, 0, 7])):
        np.testing.assert_array_equal(stack[key], images[key], err_msg=f"key {key!r}")
    np.testing.assert_array_equal(np.asarray(stack), images)
    view = stack.subset(picks)
    np.testing.assert_array_equal(view[2:11], images[picks][2:11])
    other = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    both = ImageStack.concat([view, written(other, tmp_path, np.arange(5)), stack.subset(slice(0, 4))])
    expected = np.concatenate([images[picks], other, images[:4]])
    np.testing.assert_array_equal(both[np.arange(len(expected))[::-1]], expected[::-1])
    with pytest.raises(IndexError):
        stack[20]
    with pytest.raises(ValueError, match="different sides"):
        ImageStack.concat([stack, written(images[:, :4, :4].copy(), tmp_path, np.arange(20))])


# A child process prepares N images through the cache, then reads them all as an epoch does (shuffled batches),
# and prints its peak resident memory.
EPOCH = """
import json, sys
from pathlib import Path
import numpy as np
from cxrscreen.data.cache import load_prepared
from cxrscreen.data.transforms import Preprocessing

folder, count, cache = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
paths = sorted(folder.glob("*.png"))[:count]
prepared = load_prepared(paths, Preprocessing(img_size=256), cache_dir=cache, progress=False, workers=1)
order = np.random.default_rng(0).permutation(len(prepared.images))
total = 0
for start in range(0, len(order), 32):
    total += int(prepared.images[order[start:start + 32]].sum(dtype=np.int64))
# VmHWM, not ru_maxrss: the latter keeps the peak of the process that forked this one (pytest's, 250 MB).
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"images": len(prepared.images), "peak_mb": peak_kb / 1024}))
"""


def peak_memory(folder: Path, count: int, cache: Path) -> float:
    result = subprocess.run([sys.executable, "-c", EPOCH, str(folder), str(count), str(cache)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["images"] == count
    return report["peak_mb"]


@pytest.mark.slow
def test_peak_memory_of_an_epoch_does_not_grow_with_the_collection(tmp_path: Path) -> None:
    """N and 4N images of 256 px (64 KB each prepared): in memory, 4N would add 29 MB to the peak; on disk, the
    peak stays within a few MB (a batch, the list of paths)."""
    small, large = 150, 600
    rng = np.random.default_rng(0)
    for i in range(large):
        pixels = rng.integers(0, 256, (256, 256), dtype=np.uint8)  # noise: no two images alike
        Image.fromarray(pixels, mode="L").save(tmp_path / f"{i:04d}.png", compress_level=1)
    # Each count on a warm cache, so both measure the same code path.
    for count in (small, large):
        peak_memory(tmp_path, count, tmp_path / "cache")
    grown = peak_memory(tmp_path, large, tmp_path / "cache") - peak_memory(tmp_path, small, tmp_path / "cache")
    in_memory_mb = (large - small) * 256 * 256 / 2**20
    assert grown < in_memory_mb / 3, f"peak memory grew by {grown:.1f} MB from {small} to {large} images"
