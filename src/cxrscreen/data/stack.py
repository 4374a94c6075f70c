"""Prepared images that stay on disk: a stack of uint8 (S, S) images in a file, read a batch at a time.

:func:`cxrscreen.data.cache.load_prepared` writes the images of a collection, in order, into one unnamed temporary
file (under the cache folder, so on its disk and not in a RAM-backed ``/tmp``; the system removes it when the last
process holding it ends, killed or not) and hands back an :class:`ImageStack`, which reads the rows a batch asks
for with ``os.preadv``. A process's memory therefore holds one batch of images, not the collection: a 400k-image
collection at 224 px is 20 GB of pixels.

The file is read, not memory-mapped: pages of a mapped file that a process has touched count in its resident set
(and in the peak the kernel reports) until the kernel needs them back, so an epoch over a mapped collection looks,
to a job scheduler's memory limit, like the collection in memory. Read pages stay in the page cache, shared by the
processes of a machine and given back under pressure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from cxrscreen.errors import CxrError


class _StackFile:
    """One open, unnamed temporary file of images; closed (and so removed) when no stack uses it any more."""

    def __init__(self, directory: Path | None):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.handle = tempfile.TemporaryFile(dir=directory, prefix="cxrscreen-stack-")
        self.fd = self.handle.fileno()


class ImageStack:
    """uint8 images (N, S, S) on disk. Indexing reads: ``stack[i]`` (S, S), ``stack[a:b]``, ``stack[int_array]``
    and ``stack[bool_mask]`` return numpy arrays; :meth:`subset` and :meth:`concat` make views without reading.
    ``np.asarray(stack)`` reads everything (for small stacks)."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, files: Sequence[_StackFile], side: int, file_of: np.ndarray, rows: np.ndarray):
        self._files = list(files)
        self.side = side
        self._file_of = np.asarray(file_of, dtype=np.int16)
        self._rows = np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self._rows), self.side, self.side)

    def __len__(self) -> int:
        return len(self._rows)

    def _positions(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return np.arange(len(self))[key]
        positions = np.asarray(key)
        if positions.dtype == bool:
            if positions.shape != (len(self),):
                raise IndexError(f"boolean index of shape {positions.shape} for a stack of {len(self)} images")
            return np.flatnonzero(positions)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"index out of range for a stack of {len(self)} images")
        return np.where(positions < 0, positions + len(self), positions).astype(np.int64)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read(self._positions([key]))[0]
        return self._read(self._positions(key))

    def __iter__(self):
        for position in range(len(self)):
            yield self[position]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self._read(np.arange(len(self)))
        return images if dtype is None else images.astype(dtype)

    def subset(self, key) -> ImageStack:
        """The images ``key`` selects (as :meth:`__getitem__` would), as a stack: nothing is read."""
        positions = self._positions(key)
        return ImageStack(self._files, self.side, self._file_of[positions], self._rows[positions])

    @staticmethod
    def concat(stacks: Sequence[ImageStack]) -> ImageStack:
        """The images of ``stacks`` one after the other (all of one side), as a stack: nothing is read."""
        if not stacks:
            raise ValueError("nothing to concatenate")
        if len({stack.side for stack in stacks}) > 1:
            raise ValueError(f"stacks of different sides: {sorted({stack.side for stack in stacks})}")
        files = list(dict.fromkeys(f for stack in stacks for f in stack._files))
        index = {id(f): i for i, f in enumerate(files)}
        file_of = [np.array([index[id(stack._files[i])] for i in range(len(stack._files))], dtype=np.int16)[stack._file_of]
                   for stack in stacks]
        return ImageStack(files, stacks[0].side, np.concatenate(file_of), np.concatenate([s._rows for s in stacks]))

    def _read(self, positions: np.ndarray) -> np.ndarray:
        size = self.side * self.side
        out = np.empty((len(positions), self.side, self.side), dtype=np.uint8)
        if not len(positions):
            return out
        flat = out.reshape(len(positions), size)
        files, rows = self._file_of[positions], self._rows[positions]
        # Runs of consecutive rows of one file are read at once (a slice of a stack is one read).
        breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(files) != 0)) + 1
        for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(positions)]):
            view = memoryview(flat[start:end]).cast("B")
            done = os.preadv(self._files[files[start]].fd, [view], int(rows[start]) * size)
            if done != len(view):
                raise CxrError(f"prepared-image stack: read {done} of {len(view)} bytes (was the cache disk full?)")
        return out


class StackWriter:
    """Writes ``count`` images of ``side`` px, in any order, into a new stack file under ``directory`` (None: the
    system's temporary folder); :meth:`stack` then views the rows written."""

    def __init__(self, count: int, side: int, directory: Path | None):
        self.side = side
        self._file = _StackFile(directory)
        os.ftruncate(self._file.fd, count * side * side)

    def put(self, row: int, image: np.ndarray) -> None:
        data = np.ascontiguousarray(image, dtype=np.uint8)
        if data.shape != (self.side, self.side):
            raise ValueError(f"image of shape {data.shape} in a stack of {self.side} px images")
        done = os.pwrite(self._file.fd, data.tobytes(), row * self.side * self.side)
        if done != data.nbytes:
            raise CxrError(f"prepared-image stack: wrote {done} of {data.nbytes} bytes (is the cache disk full?)")

    def stack(self, rows: Sequence[int] | np.ndarray) -> ImageStack:
        """The images of ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return ImageStack([self._file], self.side, np.zeros(len(rows), dtype=np.int16), rows)
