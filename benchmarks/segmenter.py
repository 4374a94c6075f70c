"""Lung segmenter benchmark: Dice/IoU on every JSRT image (a source it was not trained on) and CPU latency.

    .venv/bin/python benchmarks/segmenter.py [--model FILE] [--data DIR] [--runs N]

Latency is the median over ``--runs`` calls with batch 1 of the whole :meth:`LungSegmenter.segment` (resize,
network, upsampling, clean-up, plausibility) on one JSRT image, with 1 and 2 torch/ONNX Runtime threads.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from cxrscreen.data.imageio import load_xray
from cxrscreen.lungs.network import build_network, onnx_model_bytes
from cxrscreen.lungs.segmenter import DEFAULT_WEIGHTS, load_segmenter, onnx_segmenter
from cxrscreen.lungs.metrics import evaluate_segmenter
from cxrscreen.lungs.pairs import segmentation_pairs

JSRT = Path(os.environ.get("CXRSCREEN_SHARED_DATA", "../shared/data")) / "lung_segmentation" / "jsrt"


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def latency_rows(model: str | None, image: np.ndarray, runs: int) -> list[tuple[str, int, float, float]]:
    """(backend, threads, network ms, whole segment ms) for torch and ONNX Runtime."""
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        segmenter = load_segmenter(model, "torch")
        batch = segmenter.network_input([image])
        rows.append(("torch", threads, median_ms(lambda: segmenter.predict_probs(batch), runs),
                     median_ms(lambda: segmenter.segment(image), runs)))
    net, info = build_network(model or DEFAULT_WEIGHTS)
    data = onnx_model_bytes(net, info)
    for threads in (1, 2):
        segmenter = onnx_segmenter(data, threads, "the exported segmenter")
        batch = segmenter.network_input([image])
        rows.append(("onnx", threads, median_ms(lambda: segmenter.predict_probs(batch), runs),
                     median_ms(lambda: segmenter.segment(image), runs)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="segmenter weight file (default: bundled)")
    parser.add_argument("--data", default=str(JSRT), help="image/mask pairs to score (default: all of JSRT)")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pairs = segmentation_pairs(args.data)
    segmenter = load_segmenter(args.model)
    scores = evaluate_segmenter(segmenter, pairs)
    print(f"segmenter: {args.model or 'bundled'}  input {segmenter.img_size} px  data: {args.data}")
    print(f"\n| metric ({scores['images']} images) | mean | median | min |\n|---|---|---|---|")
    for metric in ("dice", "iou"):
        print(f"| {metric} | {scores[metric + '_mean']:.4f} | {scores[metric + '_median']:.4f} | {scores[metric + '_min']:.4f} |")
    print(f"\nplausible masks: {scores['plausible_fraction']:.1%}")
    image = load_xray(pairs[0][0])
    print(f"\n| backend | threads | network ms/image | segment() ms/image ({image.shape[1]}x{image.shape[0]}) |")
    print("|---|---|---|---|")
    for backend, threads, net_ms, total_ms in latency_rows(args.model, image, args.runs):
        print(f"| {backend} | {threads} | {net_ms:.1f} | {total_ms:.1f} |")


if __name__ == "__main__":
    main()
