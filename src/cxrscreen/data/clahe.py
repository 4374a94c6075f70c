"""CLAHE as scikit-image's ``exposure.equalize_adapthist`` computes it, vectorised for 2-D images.

The bundled model was trained on scikit-image's CLAHE, so its output must not change: this is the same algorithm
(Zuiderveld's, skimage 0.26 code path, kernel 1/8 of each side, 2**14 grey levels, ``nbins`` bins), with the same
float operations on every value that reaches the result, so the result is identical to the last bit
(``tests/data/test_preparation_is_bit_identical.py`` checks it on 300 real X-rays). OpenCV's ``createCLAHE`` is
faster still but a different algorithm (tiling, clip limit, interpolation) and changes the model's probabilities by
more than 1e-3.

What is faster than scikit-image (about 12 ms -> 0.9 ms for a 160 x 160 image on one core): one ``bincount`` for
all tile histograms; the histogram clipping done for all tiles at once (:func:`clip_histograms`); the index arrays
and blending weights, which depend only on the image's shape, made once per shape (:func:`tile_plan`); the blend
computed for the image's own pixels only (not the padding), in the image's layout, with each of the four products
rounded to float32 as skimage does; integer division for the bins and ``take(mode="clip")`` for the look-ups
(numpy's float64 ``floor_divide`` and bounds-checked ``take`` are several times slower).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

NR_OF_GRAY = 2**14


def equalize_adapthist(image: np.ndarray, clip_limit: float = 0.01, nbins: int = 256) -> np.ndarray:
    """float32 (H, W) in [0, 1] -> CLAHE'd float32 (H, W) in [0, 1], equal to
    ``skimage.exposure.equalize_adapthist(image, clip_limit=clip_limit, nbins=nbins)``."""
    image = np.asarray(image, dtype=np.float32)
    plan = tile_plan(image.shape, nbins)
    bins = grey_bins(image, nbins)
    key = plan.hist_offset + np.take(bins, plan.hist_source, mode="clip")  # "clip": no bounds check, 2x faster
    hist = np.bincount(key, minlength=plan.n_tiles * nbins).reshape(plan.n_tiles, nbins)
    limit = int(np.clip(clip_limit * plan.pixels, 1, None)) if clip_limit > 0.0 else plan.pixels
    maps = tile_maps(clip_histograms(hist, limit), plan)
    return rescale_to_unit(blend(maps, bins, plan).reshape(image.shape))


def grey_bins(image: np.ndarray, nbins: int) -> np.ndarray:
    """The histogram bin (uint16, (H, W) flattened) of each pixel, as skimage derives it: ``img_as_uint`` (float32,
    round half to even, clip), ``rescale_intensity`` to [0, NR_OF_GRAY - 1] in float64, round, integer-divide."""
    as_uint = np.multiply(image, 65535, dtype=np.float32)
    np.rint(as_uint, out=as_uint)
    low, high = float(as_uint.min()), float(as_uint.max())
    if low < 0 or high > 65535:
        np.clip(as_uint, 0, 65535, out=as_uint)
        low, high = min(max(low, 0.0), 65535.0), min(max(high, 0.0), 65535.0)
    if low != high:
        grey = np.subtract(as_uint, low, dtype=np.float64)  # the uint16 values, exactly, minus the lowest
        grey /= high - low
        grey *= float(NR_OF_GRAY - 1)
    else:
        grey = np.clip(as_uint, 0.0, float(NR_OF_GRAY - 1), dtype=np.float64)
    np.round(grey, out=grey)
    # Integer division: float64 floor_divide takes 30 times as long.
    return np.floor_divide(grey.astype(np.uint16), np.uint16(1 + NR_OF_GRAY // nbins)).ravel()


@dataclass(frozen=True)
class TilePlan:
    """What CLAHE needs about an image shape, made once per shape by :func:`tile_plan` (flat pixel indices).

    ``hist_source``/``hist_offset``: for each pixel of the (reflect-padded) tiles, the image pixel it copies and
    its tile's first histogram bin. ``base``: per image pixel, the first bin of its upper-left neighbour tile in the
    flattened (edge-padded) maps; ``edges``: per neighbour (upper-left, upper-right, lower-left, lower-right), the
    offset from ``base`` and the float64 blending weight of each pixel, skimage's products of the distances."""

    n_hist: tuple[int, int]
    pixels: int
    hist_source: np.ndarray
    hist_offset: np.ndarray
    base: np.ndarray
    edges: tuple[tuple[int, np.ndarray], ...]

    @property
    def n_tiles(self) -> int:
        return self.n_hist[0] * self.n_hist[1]


@functools.lru_cache(maxsize=4)  # 60 bytes a pixel: 1.5 MB for 160 x 160
def tile_plan(shape: tuple[int, int], nbins: int) -> TilePlan:
    """The :class:`TilePlan` of images of ``shape`` (H, W): skimage's kernel (1/8 of each side), its padding
    (reflect, so that the image is a whole number of kernels plus half a kernel on each side) and tiles."""
    kernel = (max(shape[0] // 8, 1), max(shape[1] // 8, 1))
    pad_start = tuple(k // 2 for k in kernel)
    pad_end = tuple((k - s % k) % k + int(np.ceil(k / 2.0)) for k, s in zip(kernel, shape))
    padding = [(pad_start[0], pad_end[0]), (pad_start[1], pad_end[1])]
    source = np.pad(np.arange(shape[0] * shape[1]).reshape(shape), padding, mode="reflect")
    n_proc = tuple(p // k for p, k in zip(source.shape, kernel))  # the padded sides are multiples of the kernel
    n_hist = (n_proc[0] - 1, n_proc[1] - 1)
    (k0, k1), (h0, h1) = kernel, n_hist
    tiles = source[k0 // 2 : k0 // 2 + h0 * k0, k1 // 2 : k1 // 2 + h1 * k1]
    tile_of = (np.arange(h0)[:, None] * h1 + np.arange(h1)[None, :]) * nbins
    offset = np.broadcast_to(tile_of[:, None, :, None], (h0, k0, h1, k1)).reshape(tiles.shape)

    rows, cols = np.arange(shape[0]) + pad_start[0], np.arange(shape[1]) + pad_start[1]
    # Tile (row, column) in the maps padded by one tile on each side: block b's upper-left neighbour is tile b.
    base = ((rows // k0)[:, None] * (n_hist[1] + 2) + (cols // k1)[None, :]) * nbins
    down, right = (rows % k0 / k0)[:, None], (cols % k1 / k1)[None, :]
    weights = {
        (0, 0): (1 - down) * (1 - right),
        (0, 1): (1 - down) * right,
        (1, 0): down * (1 - right),
        (1, 1): down * right,
    }
    edges = tuple(((e0 * (n_hist[1] + 2) + e1) * nbins, weight.ravel()) for (e0, e1), weight in weights.items())
    plan = TilePlan(n_hist, k0 * k1, tiles.ravel(), offset.ravel(), base.ravel(), edges)
    for array in (plan.hist_source, plan.hist_offset, plan.base, *(weight for _, weight in edges)):
        array.flags.writeable = False  # shared by every image of this shape
    return plan


def tile_maps(hist: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Clipped histograms (tiles, bins) -> each tile's grey-level map, flattened over the maps padded (edge) by one
    tile on each side: skimage's cumulative sum scaled to [0, NR_OF_GRAY - 1], truncated (float32, exact)."""
    lut = np.cumsum(hist, axis=-1).astype(np.float64)
    lut *= (NR_OF_GRAY - 1) / plan.pixels
    np.minimum(lut, NR_OF_GRAY - 1, out=lut)
    np.trunc(lut, out=lut)
    maps = lut.astype(np.float32).reshape(plan.n_hist[0], plan.n_hist[1], -1)
    rows, cols = (np.clip(np.arange(-1, n + 1), 0, n - 1) for n in plan.n_hist)  # np.pad's "edge", 4x faster
    return maps[rows][:, cols].ravel()


def blend(maps: np.ndarray, bins: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Each pixel's level mapped by its four nearest tiles, blended bilinearly as skimage does: every product
    (map value x float64 weight) rounded to float32, summed in float32 in skimage's order, truncated."""
    lookup = bins + plan.base
    mapped = np.empty(lookup.shape, dtype=np.float32)
    term = np.empty(lookup.shape, dtype=np.float32)
    result = np.empty(lookup.shape, dtype=np.float32)
    for number, (offset, weight) in enumerate(plan.edges):
        np.take(maps[offset:], lookup, out=mapped, mode="clip")
        # The float64 product, rounded once to float32; the first term is the sum so far (0 + term is term).
        np.multiply(mapped, weight, out=result if number == 0 else term, casting="unsafe")
        if number:
            result += term
    return np.trunc(result, out=result)  # skimage casts to uint16: the values are in [0, NR_OF_GRAY)


def rescale_to_unit(levels: np.ndarray) -> np.ndarray:
    """skimage's final ``rescale_intensity(out_range=(0, 1))`` of the float32 levels (in place): float32
    arithmetic, as skimage's with Python-float bounds (exact integers here)."""
    low, high = float(levels.min()), float(levels.max())
    if low == high:
        return np.clip(levels, 0.0, 1.0, out=levels)
    levels -= low
    levels /= high - low
    return levels


def clip_histograms(hist: np.ndarray, limit: int) -> np.ndarray:
    """skimage's ``clip_histogram`` on every row of ``hist`` (tiles, bins) at once (a new array): counts above
    ``limit`` are cut and spread evenly over the bins below it, what is left as skimage's last loop spreads it."""
    total = hist.sum(axis=1)
    clipped = np.minimum(hist, limit)
    increment = (total - clipped.sum(axis=1)) // hist.shape[1]
    # skimage adds the increment to the bins under ``limit - increment`` and then sets those at or above it to the
    # limit: the same as adding it to every bin and then setting those at or above the mark to the limit.
    upper = (limit - increment)[:, None]
    clipped += increment[:, None]
    np.maximum(clipped, (clipped >= upper) * limit, out=clipped)  # those at or above the mark: at least the limit,
    np.minimum(clipped, limit, out=clipped)  # then exactly; the others are under it already
    # skimage keeps count of the excess it cuts and hands out; what is left is what the bins are short of.
    _spread_remainders(clipped, total - clipped.sum(axis=1), limit)
    return clipped


def _spread_remainders(hist: np.ndarray, n_excess: np.ndarray, limit: int) -> None:
    """The last loop of skimage's ``clip_histogram`` (in place), for all rows with excess left at once.

    skimage walks ``index`` over the bins, each time adding 1 to every ``step``-th bin from ``index`` that is under
    the limit, ``step`` = (bins under the limit) // (excess left), until no excess is left; it repeats such passes
    until one changes nothing. An index that adds nothing changes nothing, so each row here jumps to the next index
    that adds something: the smallest ``index + phase`` over the bins under the limit, ``phase`` = (bin - index)
    mod ``step`` (read from :func:`_phases`). Two or three such jumps finish nearly every tile."""
    rows = np.flatnonzero(n_excess > 0)
    nbins = hist.shape[1]
    phases = _phases(nbins)
    counts, left = hist[rows], n_excess[rows]
    index = np.zeros(rows.size, dtype=np.intp)  # where each row's pass goes on
    previous = left.copy()  # the excess when each row's pass began
    while rows.size:
        under = counts < limit
        step = np.maximum(1, under.sum(axis=1) // left)
        reach = phases[step - 1, nbins - 1 - np.minimum(index, nbins - 1)]  # (bin - index) mod step, or nbins
        np.maximum(reach, np.multiply(~under, np.int16(nbins), dtype=np.int16), out=reach)  # 10x a masked set
        jump = reach.min(axis=1)
        picks = jump < nbins
        pick = (reach == jump[:, None]) & picks[:, None]
        counts += pick
        left -= pick.sum(axis=1)
        hist[rows] = counts
        index += jump + 1
        ended = (left > 0) & (~picks | (index >= nbins))
        going = (left > 0) & ~(ended & (left == previous))
        again = ended & going
        index[again], previous[again] = 0, left[again]
        # Nine rows in ten are done after the first jump: the next ones go on with the few that are not.
        rows, counts, left, index, previous = (part[going] for part in (rows, counts, left, index, previous))


@functools.lru_cache(maxsize=2)
def _phases(nbins: int) -> np.ndarray:
    """``[step - 1, nbins - 1 - index]`` -> int16 (nbins,): (bin - index) mod step for each bin, ``nbins`` for the
    bins before ``index`` (a read-only view into one table, one row per step, all indices as offsets into it)."""
    offset = np.arange(-(nbins - 1), nbins)[None, :]
    steps = np.arange(1, nbins + 1)[:, None]
    table = np.where(offset >= 0, offset % steps, nbins).astype(np.int16)
    return np.lib.stride_tricks.sliding_window_view(table, nbins, axis=1)
