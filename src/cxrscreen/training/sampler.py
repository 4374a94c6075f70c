"""Source- and class-balanced drawing of a training epoch (``--balance``).

The training images fall into cells: their class (``class``), their collection (``source``) or both
(``class_source``). An epoch draws as many images as the training split holds, shared evenly over the cells,
except that no cell is drawn more than ``cap`` times its size; what a capped cell cannot take goes, again evenly,
to the others (:func:`cell_quotas`). A cell drawn more often than it has images gives every image the same number
of draws, give or take one; a cell drawn less often gives a random subset. The draw depends only on the seed and the
epoch (so a resumed run draws what it would have), and under DDP each rank takes its slice of the one global draw,
as :func:`cxrscreen.training.steps.rank_indices` does for the plain shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrscreen.errors import ConfigError

BALANCE_MODES = ("none", "class", "source", "class_source")
DEFAULT_CAP = 10.0


def cell_quotas(sizes: np.ndarray, total: int, cap: float) -> np.ndarray:
    """Draws per cell: ``total`` shared evenly over the cells, none above ``cap`` x its size (the rest goes evenly
    to the others). Where ``total`` does not divide evenly, the first uncapped cells get one draw more."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if total > cap * sizes.sum():
        raise ConfigError(f"cannot draw {total} images from {sizes.sum()} with each drawn at most {cap:g} times")
    quotas = np.zeros(len(sizes), dtype=np.int64)
    open_cells = np.flatnonzero(sizes > 0)
    remaining = total
    while len(open_cells):
        limits = np.floor(cap * sizes[open_cells]).astype(np.int64)
        capped = limits * len(open_cells) <= remaining  # limit <= even share
        if not capped.any():
            break
        quotas[open_cells[capped]] = limits[capped]
        remaining -= int(limits[capped].sum())
        open_cells = open_cells[~capped]
    if len(open_cells):
        base, extra = divmod(remaining, len(open_cells))
        quotas[open_cells] = base
        quotas[open_cells[:extra]] += 1
    return quotas


def draw_cell(members: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
    """``quota`` draws from one cell: each member ``quota // size`` times, plus a random subset for the rest."""
    repeats, rest = divmod(quota, len(members))
    return np.concatenate([np.tile(members, repeats), rng.permutation(members)[:rest]])


@dataclass(frozen=True)
class BalancedSampler:
    """The cells of the training images (``cells[i]``: the cell of image ``i``; ``names``: one per cell) and the
    cap; :meth:`draw` gives an epoch's global order, :meth:`rank_indices` a rank's slice of it."""

    cells: np.ndarray
    names: tuple[str, ...]
    cap: float = DEFAULT_CAP

    @property
    def quotas(self) -> np.ndarray:
        sizes = np.bincount(self.cells, minlength=len(self.names))
        return cell_quotas(sizes, len(self.cells), self.cap)

    def draws_per_image(self) -> np.ndarray:
        """How often an epoch draws each image, on average: its cell's quota over the cell's size. Class weights of
        the loss are counted with it, so that a class the sampler already balances is not weighted up again."""
        sizes = np.bincount(self.cells, minlength=len(self.names))
        return (self.quotas / np.maximum(sizes, 1))[self.cells]

    def draw(self, epoch: int, seed: int) -> np.ndarray:
        """The epoch's draw: indices into the training images, ``len(cells)`` of them, shuffled."""
        rng = np.random.default_rng([seed, epoch])
        parts = [draw_cell(np.flatnonzero(self.cells == cell), int(quota), rng)
                 for cell, quota in enumerate(self.quotas) if quota > 0]
        return rng.permutation(np.concatenate(parts))

    def rank_indices(self, epoch: int, seed: int, rank: int, world_size: int) -> np.ndarray:
        """This rank's slice of the epoch's draw (disjoint across ranks; the tail that does not divide evenly is
        dropped, as DistributedSampler(drop_last=True) does)."""
        per_rank = len(self.cells) // world_size
        return self.draw(epoch, seed)[: per_rank * world_size][rank::world_size]

    def describe(self) -> list[str]:
        """One line per cell: its images and its draws per epoch."""
        sizes = np.bincount(self.cells, minlength=len(self.names))
        return [f"{name}: {size} images, {quota} draws per epoch"
                for name, size, quota in zip(self.names, sizes, self.quotas)]


def balance_cells(mode: str, targets: np.ndarray, sources: np.ndarray, classes: list[str], collections: list[str]
                  ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Cell index per image and the cells' names (sorted; only cells that hold an image) for ``mode``: ``class``,
    ``source`` or ``class_source`` (named ``class/collection``). ``targets`` and ``sources`` index ``classes`` and
    ``collections``."""
    if mode == "class":
        labels = [classes[t] for t in targets]
    elif mode == "source":
        labels = [collections[s] for s in sources]
    elif mode == "class_source":
        labels = [f"{classes[t]}/{collections[s]}" for t, s in zip(targets, sources)]
    else:
        raise ConfigError(f"--balance must be one of {', '.join(BALANCE_MODES[1:])} to make cells, got {mode!r}")
    names = tuple(sorted(set(labels)))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in labels], dtype=np.int64), names
