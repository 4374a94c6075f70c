"""Prepared (decoded, preprocessed, resized) images for training and evaluation, cached on disk.

:func:`load_prepared` is the one entry point: it returns the network inputs of many files as uint8 images, kept
on disk in one stack per call (:mod:`cxrscreen.data.stack`) and read a batch at a time.
Each file is decoded and preprocessed once: the result is stored as one uint8 ``.npy`` per (file content,
preprocessing) under ``<cache>/prepared/<variant>/<hash[:2]>/<hash>.npy``, where

- ``hash`` is the blake2b digest of the file's bytes (renaming or copying a file keeps its entry; editing it
  makes a new one), and
- ``variant`` is a digest of :data:`PREPARATION_VERSION`, :meth:`Preprocessing.cache_key` and, for lung-focused
  preprocessing, the lung finder's digest (the segmenter's weight file and the engine running it: ONNX Runtime
  and torch do not give the same image for every file, see :mod:`cxrscreen.lungs.finder`), so changing any of
  them starts a new cache.

The cache lives under :func:`cache_root`, cxrscreen's one cache folder (the pHash and ONNX caches use it too). Entries are written atomically (temporary
file + rename), so processes building the same cache at once (DDP ranks) never read a half-written entry.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from cxrscreen.data.imageio import iter_image_files, load_xray, read_image_file, to_uint8
from cxrscreen.data.stack import ImageStack, StackWriter
from cxrscreen.data.transforms import FindLungsBatch, LungFinder, Preprocessing
from cxrscreen.errors import ConfigError, CxrError, DatasetLayoutError, ImageDecodeError, ModelError
from cxrscreen.hashing import content_hash
from cxrscreen.io_utils import atomic_write, write_json
from cxrscreen.threads import choose_thread_settings, worker_threads

ON_BAD_IMAGE = ("skip", "fail")
# Below this many cache misses a thread pool costs more than it saves.
MIN_PARALLEL_MISSES = 16
# Files prepared together: their lungs are found in one pass of the segmenter.
PREPARE_BATCH = 32
# Bump whenever decoding or preparing an image changes its result (imageio, transforms, lungs code): entries of
# other versions are then never read. The Preprocessing settings and segmenter weights are keyed separately.
PREPARATION_VERSION = 1


@dataclass
class PreparedImages:
    """``images[i]`` (uint8, img_size x img_size) is the input of ``paths[ok[i]]``; ``errors`` lists (path, reason);
    ``also[j]`` holds the same images prepared with the ``j``-th of :func:`load_prepared`'s ``also``. The images
    stay on disk (:class:`cxrscreen.data.stack.ImageStack`): indexing reads them."""

    images: ImageStack
    ok: list[int]
    errors: list[tuple[str, str]] = field(default_factory=list)
    also: list[ImageStack] = field(default_factory=list)


@dataclass
class CacheReport:
    """What :func:`build_cache` did: entries already there, entries built, files that failed (path, reason)."""

    cache_dir: Path
    cached: int = 0
    built: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "cache_dir": str(self.cache_dir),
            "cached": self.cached,
            "built": self.built,
            "failed": [{"path": path, "reason": reason} for path, reason in self.failed],
        }


def cache_root() -> Path:
    """cxrscreen's cache folder: ``$CXRSCREEN_CACHE``, else ``$XDG_CACHE_HOME/cxrscreen``, else ``~/.cache/cxrscreen``."""
    if os.environ.get("CXRSCREEN_CACHE"):
        return Path(os.environ["CXRSCREEN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxrscreen"


def check_lungs(pps: Sequence[Preprocessing], lungs: LungFinder | None) -> None:
    """Refuse lung-focused preprocessing without a lung finder (``data`` has no segmenter of its own)."""
    if lungs is None and any(pp.needs_lungs for pp in pps):
        raise ConfigError("lung-focused preprocessing needs a lung finder (cxrscreen.lungs.finder.load_lung_finder())")


class PreparedCache:
    """The on-disk entries of one preprocessing variant (``lungs``: the finder its lung-focused images came from)."""

    def __init__(self, pp: Preprocessing, cache_dir: Path | None = None, lungs: LungFinder | None = None):
        check_lungs([pp], lungs)
        self.pp = pp
        key = f"prep-v{PREPARATION_VERSION}|{pp.cache_key()}" + (f"|lungs={lungs.digest}" if lungs and pp.needs_lungs else "")
        self.variant = content_hash(key.encode())
        self.root = Path(cache_dir or cache_root()) / "prepared" / self.variant
        self._key = key
        self._described = False  # preprocessing.json known to be written (one stat per put cost 0.08 ms)

    def entry_path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        """The cached image, or None when absent or unreadable (then it is rebuilt)."""
        try:
            image = np.load(self.entry_path(digest), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        side = self.pp.img_size
        return image if image.dtype == np.uint8 and image.shape == (side, side) else None

    def put(self, digest: str, image: np.ndarray) -> None:
        if not self._described and not (self.root / "preprocessing.json").exists():
            write_json(self.root / "preprocessing.json", {"key": self._key, **self.pp.to_dict()})
        self._described = True
        # No fsync: a torn entry after a crash fails validation in get() and is rebuilt.
        with atomic_write(self.entry_path(digest), fsync=False) as fh:
            np.save(fh, image, allow_pickle=False)


@dataclass
class _Variant:
    """One preprocessing asked for, and its cache entries (None without the cache)."""

    pp: Preprocessing
    cache: PreparedCache | None


@dataclass
class _Outcome:
    """Result for one file: its image (uint8) in each variant, None where not prepared yet, or the reason it failed;
    and whether every image came from the cache."""

    index: int
    images: list[np.ndarray | None] | None = None
    reason: str | None = None
    cached: bool = False

    @property
    def complete(self) -> bool:
        return self.images is None or all(image is not None for image in self.images)


def _reason(exc: Exception, path: str) -> str:
    message = str(exc)
    if isinstance(exc, CxrError):
        return message.split(": ", 1)[-1] if message.startswith(path) else message
    return f"{type(exc).__name__}: {message}"


def _read_bytes(path: str) -> bytes:
    """The file's bytes, read as the decoder reads them: directories, pipes (which would block), devices and
    oversized files raise its one-line :class:`ImageDecodeError`."""
    return read_image_file(Path(path), path)


def _lookup(index: int, path: str, variants: Sequence[_Variant]) -> _Outcome:
    """What the cache holds of one file: an image per variant (None where absent), or the file's failure."""
    if variants[0].cache is None:
        return _Outcome(index, images=[None] * len(variants))
    try:
        digest = content_hash(_read_bytes(path))
    except (CxrError, OSError) as exc:
        return _Outcome(index, reason=_reason(exc, path))
    images = [variant.cache.get(digest) if variant.cache is not None else None for variant in variants]
    return _Outcome(index, images=images, cached=all(image is not None for image in images))


def _complete(found: _Outcome, path: str, variants: Sequence[_Variant], find_lungs: FindLungsBatch | None) -> _Outcome:
    """Decode one file once and prepare the variants the cache did not hold (storing them); a failure of the file
    becomes a reason."""
    find_one = (lambda image: find_lungs([image])[0]) if find_lungs is not None else None
    try:
        data = _read_bytes(path)
        decoded = load_xray(data, path)
        digest = content_hash(data) if variants[0].cache is not None else ""
        images = list(found.images or [None] * len(variants))
        for i, variant in enumerate(variants):
            if images[i] is None:
                images[i] = to_uint8(variant.pp.prepare(decoded, find_one).input)
                if variant.cache is not None:
                    variant.cache.put(digest, images[i])
        return _Outcome(found.index, images=images)
    except (ModelError, ConfigError):
        raise  # not about this file (e.g. the lung segmenter is missing): every file would fail alike
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop a 10,000-file run
        return _Outcome(found.index, reason=_reason(exc, path))


def _complete_batch(
    batch: list[_Outcome], paths: list[str], variants: Sequence[_Variant], find_lungs: FindLungsBatch | None
) -> list[_Outcome]:
    """:func:`_complete` for a batch of files: each decoded once, the lungs of all found in one segmenter pass
    per variant (:meth:`Preprocessing.prepare_many`, the same result as file by file). A batch that fails as a
    whole is redone file by file, so that a bad file fails alone."""
    outcomes: dict[int, _Outcome] = {}
    decoded = []
    for found in batch:
        path = paths[found.index]
        try:
            data = _read_bytes(path)
            # Hashed once here, not once per variant; the bytes themselves are not kept.
            digest = content_hash(data) if variants[0].cache is not None else ""
            decoded.append((found, digest, load_xray(data, path)))
        except Exception as exc:  # noqa: BLE001 - as in _complete
            outcomes[found.index] = _Outcome(found.index, reason=_reason(exc, path))
    images = {found.index: list(found.images or [None] * len(variants)) for found, _, _ in decoded}
    try:
        for i, variant in enumerate(variants):
            todo = [(found, digest, image) for found, digest, image in decoded if images[found.index][i] is None]
            prepared = variant.pp.prepare_many([image for _, _, image in todo], find_lungs)
            for (found, digest, _), result in zip(todo, prepared):
                images[found.index][i] = to_uint8(result.input)
                if variant.cache is not None:
                    variant.cache.put(digest, images[found.index][i])
    except (ModelError, ConfigError):
        raise
    except Exception:  # noqa: BLE001 - redone file by file below
        return [_complete(found, paths[found.index], variants, find_lungs) for found in batch]
    outcomes.update({index: _Outcome(index, images=done) for index, done in images.items()})
    return [outcomes[found.index] for found in batch]


def _prepare_each(
    paths: list[str], variants: Sequence[_Variant], workers: int, progress: bool, lungs: LungFinder | None
) -> Iterator[_Outcome]:
    """Outcomes of every file: complete cache hits and failures first (in order), then the decoded rest (in order)."""
    pending: list[_Outcome] = []
    with tqdm(total=len(paths), desc="preparing images", unit="img", disable=not progress, leave=False) as bar:
        for index, path in enumerate(paths):
            outcome = _lookup(index, path, variants)
            if outcome.complete:
                bar.update()
                yield outcome
            else:
                pending.append(outcome)
        parallel = len(pending) >= MIN_PARALLEL_MISSES and workers > 1
        size = max(1, min(PREPARE_BATCH, -(-len(pending) // (workers if parallel else 1))))
        batches = [pending[i : i + size] for i in range(0, len(pending), size)]
        # Loaded here, once, before the workers share it.
        finder = lungs.load() if lungs is not None and pending and any(v.pp.needs_lungs for v in variants) else None

        def complete(batch: list[_Outcome]) -> list[_Outcome]:
            return _complete_batch(batch, paths, variants, finder)

        if not parallel:
            for outcome in (outcome for batch in batches for outcome in complete(batch)):
                bar.update()
                yield outcome
            return
        # Each worker runs the segmenter: its threads are divided among them, not multiplied (ONNX Runtime: one
        # thread per session, see cxrscreen.lungs.finder; torch: cxrscreen.threads.worker_threads).
        with worker_threads(workers), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-decode") as pool:
            try:
                for outcome in (outcome for done in pool.map(complete, batches) for outcome in done):
                    bar.update()
                    yield outcome
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


def _default_workers() -> int:
    return choose_thread_settings().decode_workers


def load_prepared(
    paths: list[str | os.PathLike],
    pp: Preprocessing,
    cache_dir: Path | None = None,
    progress: bool = True,
    on_bad_image: str = "skip",
    use_cache: bool = True,
    workers: int | None = None,
    also: Sequence[Preprocessing] = (),
    lungs: LungFinder | None = None,
) -> PreparedImages:
    """Prepare every file (see :func:`cxrscreen.data.transforms.prepare_from_source`) through the disk cache.

    Returns ``images`` uint8 (len(ok), img_size, img_size) in the order of ``paths`` (bad files left out), as an
    :class:`~cxrscreen.data.stack.ImageStack` on disk (next to the cache; with ``use_cache=False`` in the system's
    temporary folder): a process holds the batch it reads, not the collection.
    Bad files are reported in ``errors`` as (path, reason), or raise :class:`ImageDecodeError` with
    ``on_bad_image="fail"``. ``use_cache=False`` decodes everything and writes nothing. ``workers``: decode
    threads for cache misses (default: from :func:`cxrscreen.threads.choose_thread_settings`).
    ``also``: other preprocessings of the same files (e.g. the OOD guard's thumbnail), returned in
    ``PreparedImages.also`` and cached alike; each file is read once and decoded at most once for all of them.
    ``lungs``: the lung finder, required when a preprocessing is lung-focused (``data`` imports no model: the caller
    passes :func:`cxrscreen.lungs.finder.load_lung_finder`). Images stay uint8, 4x smaller than the float32
    convention; :func:`cxrscreen.data.imageio.to_float` converts a batch when it is read.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ConfigError(f"--on-bad-image must be skip or fail, got {on_bad_image!r}")
    names = [str(p) for p in paths]
    check_lungs([pp, *also], lungs)
    variants = [_Variant(one, PreparedCache(one, cache_dir, lungs) if use_cache else None) for one in (pp, *also)]
    # The images go to disk as they come, not into memory: see cxrscreen.data.stack.
    stack_dir = Path(cache_dir or cache_root()) / "stacks" if use_cache else None
    writers = [StackWriter(len(names), v.pp.img_size, stack_dir) for v in variants]
    good = np.zeros(len(names), dtype=bool)
    reasons: dict[int, str] = {}
    for outcome in _prepare_each(names, variants, workers or _default_workers(), progress, lungs):
        if outcome.images is None:
            if on_bad_image == "fail":
                raise ImageDecodeError(f"{names[outcome.index]}: {outcome.reason}")
            reasons[outcome.index] = outcome.reason or "unknown error"
        else:
            for writer, image in zip(writers, outcome.images):
                writer.put(outcome.index, image)
            good[outcome.index] = True
    ok = np.flatnonzero(good).tolist()
    errors = [(names[i], reasons[i]) for i in sorted(reasons)]
    images, *others = (writer.stack(ok) for writer in writers)
    return PreparedImages(images, ok, errors, others)


def build_cache(
    paths: list[str | os.PathLike],
    pp: Preprocessing,
    progress: bool = True,
    cache_dir: Path | None = None,
    workers: int | None = None,
    lungs: LungFinder | None = None,
) -> CacheReport:
    """Fill the cache for every image file under ``paths`` (files or folders, recursed), without keeping them.

    Raises :class:`DatasetLayoutError` only when ``paths`` hold no image file at all; bad files are reported.
    """
    files = [str(p) for p in iter_image_files(list(paths))]
    if not files:
        raise DatasetLayoutError(f"{', '.join(map(str, paths))}: no PNG, JPEG or DICOM files found")
    cache = PreparedCache(pp, cache_dir, lungs)
    report = CacheReport(cache_dir=cache.root)
    for outcome in _prepare_each(files, [_Variant(pp, cache)], workers or _default_workers(), progress, lungs):
        if outcome.images is None:
            report.failed.append((files[outcome.index], outcome.reason or "unknown error"))
        elif outcome.cached:
            report.cached += 1
        else:
            report.built += 1
    return report
