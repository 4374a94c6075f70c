"""Scale benchmark: does training's memory stay flat as the collection grows?

    .venv/bin/python benchmarks/scale.py [--sizes 2500,10000] [--img-size 160] [--batch-size 32] [--shards] [--json FILE]

For each size, a synthetic collection is made from the Radiography Database's X-rays (a random crop of 70-100% of
the side, a flip, a gamma and contrast change and Gaussian noise per image, so no two files are alike), written as
256 px PNGs in a folder-per-class layout to a temporary folder, which is removed at the end. Then:

- cache build: ``build_cache`` (what ``cxrscreen data cache`` runs) over the collection, images per second;
- ``cxrscreen train --epochs 1`` in a child process on the warm cache (pHashes, leakage-free split, one epoch,
  validation, calibration, the OOD guard's fit and the test report): its wall time, the epoch's training
  throughput (``metrics.csv``) and the child's peak resident memory (``VmHWM``, read as it exits).

With ``--shards``, also: ``cxrscreen data split``, then ``cxrscreen data shard --split`` of the training side (its
rate, images per second of the training side) and ``cxrscreen train --shards`` on them in a child process (the
training side streamed from the shards, validation and test from the warm cache): its wall time, throughput and peak
resident memory, as above.

Sizes not measured (100k, 400k on this 2-core machine would take hours) are extrapolated linearly from the two
largest measured sizes and marked so.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxrscreen.data.cache import build_cache
from cxrscreen.data.imageio import iter_image_files, load_xray
from cxrscreen.data.transforms import Preprocessing

SHARED = Path(os.environ.get("CXRSCREEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RADIOGRAPHY = SHARED / "COVID-19_Radiography_Dataset"
CLASS_FOLDERS = {"COVID": "COVID", "Normal": "Normal", "Viral Pneumonia": "Viral Pneumonia"}
SOURCES_PER_CLASS = 300
SIDE = 256
EXTRAPOLATED = (100_000, 400_000)

# Runs `cxrscreen train` in this child process, then writes its peak resident memory (VmHWM: this process's own,
# unlike ru_maxrss, which a child inherits from the process that forked it).
TRAIN_CHILD = """
import json, sys
from cxrscreen.cli import main
code = main(sys.argv[2:])
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
open(sys.argv[1], "w").write(json.dumps({"code": code, "peak_mb": peak_kb / 1024}))
"""


def source_images() -> dict[str, list[np.ndarray]]:
    """A few hundred decoded X-rays per class, the material every synthetic image is cut from."""
    out = {}
    for folder in CLASS_FOLDERS:
        files = iter_image_files([RADIOGRAPHY / folder / "images"])
        step = max(1, len(files) // SOURCES_PER_CLASS)
        out[folder] = [load_xray(path) for path in files[::step][:SOURCES_PER_CLASS]]
    return out


def synthetic_image(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One altered copy of ``source``: crop, flip, gamma, contrast, noise; uint8 (SIDE, SIDE)."""
    h, w = source.shape
    side = int(min(h, w) * rng.uniform(0.7, 1.0))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = source[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    pixels = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((SIDE, SIDE), Image.BILINEAR), np.float32) / 255
    pixels = np.clip((pixels ** rng.uniform(0.7, 1.4) - 0.5) * rng.uniform(0.8, 1.2) + 0.5, 0, 1)
    pixels = pixels + rng.normal(0, rng.uniform(0.005, 0.03), pixels.shape)
    return (np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def make_collection(root: Path, count: int, sources: dict[str, list[np.ndarray]], seed: int) -> float:
    """``count`` synthetic images in ``root/<class>/``, classes in equal shares; returns the seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    folders = list(CLASS_FOLDERS)
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        folder = folders[index % len(folders)]
        pool = sources[folder]
        image = synthetic_image(pool[rng.integers(len(pool))], rng)
        Image.fromarray(image).save(root / folder / f"{index:07d}.png", compress_level=1)
    return time.perf_counter() - start


def measure(count: int, args: argparse.Namespace, sources: dict[str, list[np.ndarray]], tmp: Path) -> dict:
    data, cache, run = tmp / f"data{count}" / "synthetic", tmp / f"cache{count}", tmp / f"run{count}"
    generate_s = make_collection(data, count, sources, seed=count)
    os.environ["CXRSCREEN_CACHE"] = str(cache)
    start = time.perf_counter()
    report = build_cache([data], Preprocessing(img_size=args.img_size), progress=False)
    build_s = time.perf_counter() - start
    argv = ["train", "--data", str(data), "--img-size", str(args.img_size), "--epochs", "1",
            "--batch-size", str(args.batch_size), "--quiet", "--no-pretrained"]
    row = {"images": count, "generate_s": round(generate_s, 1), "cache_built": report.built,
           "cache_img_s": round(count / build_s, 1), **train_child([*argv, "--out", str(run)], run, tmp / f"peak{count}.json")}
    if args.shards:
        split, shards = tmp / f"split{count}.csv", tmp / f"shards{count}"
        cli([sys.executable, "-m", "cxrscreen", "data", "split", "--data", str(data), "--out", str(split), "--quiet"])
        start = time.perf_counter()
        cli([sys.executable, "-m", "cxrscreen", "data", "shard", "--data", str(data), "--split", str(split), "--out",
             str(shards), "--img-size", str(args.img_size)])
        shard_s = time.perf_counter() - start
        train_images = json.loads((shards / "manifest.json").read_text())["samples"]
        streamed = train_child([*argv, "--split", str(split), "--shards", str(shards), "--out", str(tmp / f"shardrun{count}")],
                               tmp / f"shardrun{count}", tmp / f"shardpeak{count}.json")
        row.update({"shard_img_s": round(train_images / shard_s, 1), **{f"shards_{k}": v for k, v in streamed.items()}})
    return row


def cli(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[2:5])} failed:\n{result.stderr[-3000:]}")


def train_child(argv: list[str], run: Path, peak_file: Path) -> dict:
    """``cxrscreen train`` (``argv``) in a child process: its wall time, epoch throughput and peak RSS."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(peak_file), *argv], capture_output=True, text=True)
    train_s = time.perf_counter() - start
    if result.returncode != 0 or not peak_file.is_file():
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{result.stderr[-3000:]}")
    peak = json.loads(peak_file.read_text())
    epoch = next(csv.DictReader((run / "metrics.csv").open()))
    return {"train_wall_s": round(train_s, 1), "epoch_img_s": round(float(epoch["images_per_s"]), 1),
            "train_peak_mb": round(peak["peak_mb"], 1)}


def print_table(rows: list[dict]) -> None:
    print(f"{'images':>8} {'how':>12} {'cache img/s':>12} {'epoch img/s':>12} {'train wall s':>13} {'train peak RSS MB':>18}"
          f" {'shard img/s':>12} {'--shards epoch img/s':>21} {'--shards wall s':>16} {'--shards peak RSS MB':>21}")
    for row in rows:
        print(f"{row['images']:>8} {row['how']:>12} {row.get('cache_img_s', ''):>12} {row.get('epoch_img_s', ''):>12} "
              f"{row.get('train_wall_s', ''):>13} {row['train_peak_mb']:>18} {row.get('shard_img_s', ''):>12} "
              f"{row.get('shards_epoch_img_s', ''):>21} {row.get('shards_train_wall_s', ''):>16} "
              f"{row.get('shards_train_peak_mb', ''):>21}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2500,10000", help="collection sizes to measure, comma-separated")
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shards", action="store_true", help="also shard the training side and train --shards on it")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    sources = source_images()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-scale-") as tmp:
        for count in sizes:
            rows.append({**measure(count, args, sources, Path(tmp)), "how": "measured"})
            print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        (a, b) = rows[-2], rows[-1]
        slope = (b["train_peak_mb"] - a["train_peak_mb"]) / (b["images"] - a["images"])
        for count in (c for c in EXTRAPOLATED if c > b["images"]):
            rows.append({"images": count, "how": "extrapolated",
                         "train_peak_mb": round(b["train_peak_mb"] + slope * (count - b["images"]), 1)})
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
