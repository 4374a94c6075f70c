"""Where training's memory goes as the collection grows: the resident memory of each phase of ``cxrscreen train``.

    .venv/bin/python benchmarks/train_memory.py --images 100000 [--distinct 200] [--img-size 64] [--steps 3] [--trace]

Runs the real training pipeline (:class:`cxrscreen.training.trainer.Trainer`, default settings) in this process on
a synthetic collection of ``--images`` files and prints, for each phase, the resident memory after it and its peak
(``VmHWM``, reset before each phase through ``/proc/self/clear_refs``). Run it at two sizes: the difference per image
is what a phase holds per image. ``--trace`` also reports the Python heap (tracemalloc) of each phase and its
biggest holders as the guard's fit starts (several times slower).

To reach hundreds of thousands of images in minutes, the collection is cheap, and this is what it leaves out:

- the files are hard links (each its own path) to ``--distinct`` real X-rays per class of the Radiography Database,
  so the prepared-image cache holds only those (every other file hits it: decoding is not measured here, the
  scale benchmark measures it);
- their pHashes are put in the pHash cache beforehand: random 256-bit hashes, 5% of them near copies (a few bits
  flipped) of another image's, so the split and the guard's folds join groups as on real data;
- the epoch stops after ``--steps`` batches (the sampler still draws the whole epoch's order); validation, calibration,
  the guard's fit (on at most 10,000 images, as always) and the test report run in full.

Everything is made in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("CXRSCREEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RADIOGRAPHY = SHARED / "COVID-19_Radiography_Dataset"
CLASSES = ("COVID", "Normal", "Viral Pneumonia")


def status_mb(field: str) -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":")) / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current resident size


PHASES: list[dict] = []


def measured(name: str, fn):
    """``fn`` with its resident memory after and peak during recorded under ``name`` (and the gap before it)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gap_peak = status_mb("VmHWM")
        if PHASES:
            PHASES[-1]["gap_peak_mb"] = max(PHASES[-1].get("gap_peak_mb", 0), gap_peak)
        reset_peak()
        if tracemalloc.is_tracing():
            if name == "fit_scored_guard":  # the peak phase: what the Python heap holds as it starts
                for stat in tracemalloc.take_snapshot().statistics("lineno")[:12]:
                    print("  held:", stat, flush=True)
            tracemalloc.reset_peak()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        PHASES.append({"phase": name, "seconds": round(time.perf_counter() - start, 1),
                       "rss_mb": round(status_mb("VmRSS"), 1), "peak_mb": round(status_mb("VmHWM"), 1)})
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            PHASES[-1].update(traced_mb=round(current / 2**20, 1), traced_peak_mb=round(peak / 2**20, 1))
        print(PHASES[-1], flush=True)
        reset_peak()
        return result

    return wrapper


def make_collection(root: Path, count: int, distinct: int) -> Path:
    data = root / "data" / "synthetic"
    for cls in CLASSES:
        files = sorted((RADIOGRAPHY / cls / "images").iterdir())[:distinct]
        originals = root / "originals" / cls
        originals.mkdir(parents=True)
        for i, path in enumerate(files):
            shutil.copy(path, originals / f"{i}.png")
        (data / cls).mkdir(parents=True)
    for index in range(count):
        cls = CLASSES[index % len(CLASSES)]
        os.link(root / "originals" / cls / f"{(index // len(CLASSES)) % distinct}.png", data / cls / f"{index:07d}.png")
    return data


def plant_hashes(data: Path, seed: int) -> None:
    """Random pHashes for every file, 5% of them a few bits from another's, in the pHash cache."""
    from cxrscreen.data.dedup import CACHE_FILE_NAME, HashCache, file_key
    from cxrscreen.data.cache import cache_root

    paths = sorted(str(p) for p in data.rglob("*.png"))
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**63, size=(len(paths), 4), dtype=np.int64).astype(np.uint64) * np.uint64(2) + \
        rng.integers(0, 2, size=(len(paths), 4)).astype(np.uint64)
    copies = np.flatnonzero(rng.random(len(paths)) < 0.05)
    originals = rng.integers(0, len(paths), len(copies))
    words[copies] = words[originals]
    for bit in range(6):  # flip 6 random bits of 256 in each copy: within the default distance of its original
        word, shift = rng.integers(0, 4, len(copies)), rng.integers(0, 64, len(copies)).astype(np.uint64)
        words[copies, word] ^= np.uint64(1) << shift
    cache = HashCache(cache_root() / CACHE_FILE_NAME)
    for start in range(0, len(paths), 50_000):
        chunk = paths[start : start + 50_000]
        cache.put({file_key(p): "".join(f"{int(w):016x}" for w in words[start + i]) for i, p in enumerate(chunk)})
    cache.close()


def instrument(steps: int) -> None:
    from cxrscreen.training import run_data, trainer

    for module, names in ((run_data, ("load_dataset", "hash_files", "make_split", "split_from_rows", "load_split")),
                          (trainer, ("save_split", "prepare_run_data", "predict_logits", "choose_temperature",
                                     "fit_scored_guard", "validation_reference", "held_out_report", "save_checkpoint",
                                     "write_json"))):
        for name in names:
            setattr(module, name, measured(name, getattr(module, name)))
    cls = trainer.Trainer
    for name in ("build_model", "balanced_sampler", "train_epoch"):  # validate, record_epoch: their parts are above
        setattr(cls, name, measured(name, getattr(cls, name)))
    real_steps = cls.steps_per_epoch
    cls.steps_per_epoch = lambda self: min(steps, real_steps(self))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--distinct", type=int, default=200, help="real X-rays per class the files link to")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="training batches of the one epoch")
    parser.add_argument("--trace", action="store_true", help="also trace Python allocations (tracemalloc; slower)")
    parser.add_argument("--keep", type=Path, help="make the collection here and keep it (reused when it exists)")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="cxr-trainmem-", dir=os.environ.get("TMPDIR", "/tmp")))
    os.environ["CXRSCREEN_CACHE"] = str(tmp / "cache")
    try:
        data = tmp / "data" / "synthetic"
        if not data.is_dir():
            start = time.perf_counter()
            make_collection(tmp, args.images, args.distinct)
            plant_hashes(data, seed=args.images)
            print(f"collection of {args.images} files made in {time.perf_counter() - start:.0f} s", flush=True)
        from cxrscreen.training.config import TrainConfig
        from cxrscreen.training.trainer import train

        instrument(args.steps)
        cfg = TrainConfig(data=[str(data)], out=str(tmp / "run"), img_size=args.img_size, epochs=1, pretrained=False)
        if args.trace:
            tracemalloc.start()
        reset_peak()
        base = status_mb("VmRSS")
        train(cfg, overwrite=True, progress=False, log=lambda msg: print("  " + msg, file=sys.stderr))
        print(f"\n{args.images} images, img-size {args.img_size}: resident at start {base:.0f} MB")
        print(f"{'phase':<22} {'seconds':>8} {'RSS after MB':>13} {'peak MB':>9} {'peak after it MB':>17}"
              f" {'traced MB':>10} {'traced peak MB':>15}")
        for row in PHASES:
            gap = round(row["gap_peak_mb"], 1) if "gap_peak_mb" in row else ""
            print(f"{row['phase']:<22} {row['seconds']:>8} {row['rss_mb']:>13} {row['peak_mb']:>9} {gap:>17} "
                  f"{row.get('traced_mb', ''):>10} {row.get('traced_peak_mb', ''):>15}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
