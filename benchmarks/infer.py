"""Inference benchmark: torch eager against ONNX Runtime, side by side, on real X-rays.

    .venv/bin/python benchmarks/infer.py [--model FILE] [--threads N] [--rounds 5] [--latency-images 50]
        [--data DIR] [--json FILE]

For one model (default: the bundled one; without it, an ImageNet-initialised efficientnet_lite0 at 224 px, as
speed does not depend on the weights), every configuration is measured in the same run:

- throughput: images/s of ``Predictor.predict_prepared`` on batches of 32 prepared real X-rays (network only);
  rounds are interleaved across configurations so a busy shared CPU hurts them alike, and the median is kept;
- single-image latency: ``Predictor.predict(path)`` on ``--latency-images`` different real files, one at a time:
  decode + preprocess + inference + OOD guard, median and 90th percentile in ms.

Configurations: torch eager (inference_mode) with contiguous and channels-last tensors; ONNX Runtime with all
graph optimisations and with none. Targets: ONNX Runtime >= 2x torch eager throughput, latency <= 40 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cxrscreen.data.imageio import iter_image_files
from cxrscreen.data.transforms import Preprocessing, prepare_from_source
from cxrscreen.inference.predictor import DEFAULT_MODEL, Predictor, load_predictor
from cxrscreen.io_utils import write_json
from cxrscreen.models.checkpoint import ModelMeta, save_checkpoint
from cxrscreen.models.registry import create_model

BATCH = 32
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "COVID-19_Radiography_Dataset"
CONFIGS = {
    "torch eager": {"backend": "torch", "channels_last": False},
    "torch eager, channels-last": {"backend": "torch", "channels_last": True},
    "ONNX Runtime, all optimisations": {"backend": "onnx", "onnx_optimization": "all"},
    "ONNX Runtime, no optimisation": {"backend": "onnx", "onnx_optimization": "disabled"},
}


@dataclass
class Result:
    config: str
    images_per_s: float
    latency_median_ms: float
    latency_p90_ms: float


def stand_in_model(folder: Path, img_size: int = 224) -> Path:
    """An ImageNet-initialised efficientnet_lite0 checkpoint: the bundled model's architecture and input size."""
    path = folder / "lite0.pt"
    meta = ModelMeta(arch="efficientnet_lite0", classes=["covid", "normal", "viral"], preprocessing=Preprocessing(img_size))
    save_checkpoint(path, create_model("efficientnet_lite0", 3, pretrained=True), meta)
    return path


def throughput(predictor: Predictor, batch: np.ndarray) -> float:
    """Images/s of one forward pass over ``batch`` (float32 (32, S, S))."""
    start = time.perf_counter()
    predictor.predict_prepared(batch)
    return len(batch) / (time.perf_counter() - start)


def latencies_ms(predictor: Predictor, files: list[Path]) -> list[float]:
    """Wall time of ``predict(path)`` per file, decode included."""
    times = []
    for path in files:
        start = time.perf_counter()
        predictor.predict(path)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def run(model: Path, files: list[Path], threads: int, rounds: int, latency_images: int) -> list[Result]:
    torch.set_num_threads(threads)
    predictors = {name: load_predictor(model, batch_size=BATCH, threads=threads, **kw) for name, kw in CONFIGS.items()}
    pp = next(iter(predictors.values())).meta.preprocessing
    batch = np.stack([prepare_from_source(p, pp) for p in files[:BATCH]])
    for predictor in predictors.values():
        throughput(predictor, batch)  # warm-up: allocations, ORT arenas, first-call kernels
        latencies_ms(predictor, files[:3])
    speeds: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predictor in predictors.items():
            speeds[name].append(throughput(predictor, batch))
    results = []
    for name, predictor in predictors.items():
        times = latencies_ms(predictor, files[BATCH : BATCH + latency_images])
        results.append(
            Result(name, statistics.median(speeds[name]), statistics.median(times), float(np.percentile(times, 90)))
        )
    return results


def print_table(results: list[Result], model_note: str, img_size: int, threads: int) -> None:
    baseline = results[0].images_per_s
    print(f"model: {model_note}; input {img_size} x {img_size}; {threads} thread(s); {platform.processor() or platform.machine()}")
    print(f"{'configuration':<34} {'img/s @32':>10} {'vs eager':>9} {'latency p50':>12} {'p90':>8}")
    for r in results:
        print(
            f"{r.config:<34} {r.images_per_s:>10.1f} {r.images_per_s / baseline:>8.2f}x "
            f"{r.latency_median_ms:>9.1f} ms {r.latency_p90_ms:>5.1f} ms"
        )
    print("targets: ONNX Runtime >= 2x torch eager throughput; single-image latency <= 40 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint .pt or run directory (default: the bundled model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for both engines")
    parser.add_argument("--rounds", type=int, default=5, help="throughput measurements per configuration")
    parser.add_argument("--latency-images", type=int, default=50, help="files timed one at a time")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real X-rays (recursed)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    files = iter_image_files([args.data])
    # Spread the picks over the folder (all classes), fixed for repeatability.
    files = [files[i] for i in np.random.default_rng(0).choice(len(files), BATCH + args.latency_images, replace=False)]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("CXRSCREEN_CACHE", tmp)
        if args.model is not None:
            model, note = args.model, str(args.model)
        elif DEFAULT_MODEL.is_file():
            model, note = DEFAULT_MODEL, "bundled default"
        else:
            model, note = stand_in_model(Path(tmp)), "efficientnet_lite0 stand-in (no bundled model yet)"
        results = run(model, files, args.threads, args.rounds, args.latency_images)
        img_size = load_predictor(model).img_size
    print_table(results, note, img_size, args.threads)
    if args.json:
        write_json(args.json, {"model": note, "img_size": img_size, "threads": args.threads, "results": [asdict(r) for r in results]})


if __name__ == "__main__":
    main()
