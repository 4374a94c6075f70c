"""Input-pipeline benchmark: is training on this CPU limited by the network rather than by the data?

    .venv/bin/python benchmarks/pipeline.py [--images 256] [--batch-size 32] [--img-size 224] [--threads N]
        [--data DIR ...] [--plain-workers 0] [--json FILE]

For efficientnet_lite0 (ImageNet weights), in one run, on a few hundred real X-rays:

- (a) forward + backward + AdamW step on a batch already in memory as a float tensor: the network's ceiling
  (measured before and after (b), averaged, since the CPU may be shared);
- (b) the real training loop: ``load_prepared`` (disk cache) -> uint8 array -> float tensor -> ``BatchAugment``
  -> forward/backward/step, with an empty cache (decoding counted) and with a warm one. Target: warm >= 90% of (a);
- evaluation (forward only): cxrscreen (``load_prepared`` + ``Predictor.predict_prepared``, batched) against a
  plain PyTorch loop whose Dataset opens, converts and resizes every image with Pillow at each step, as
  notebooks do; same network, same batch size.

The cache goes to a fresh temporary folder (removed at the end), so "cold" is really cold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.imageio import iter_image_files
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.models.checkpoint import ModelMeta, save_checkpoint
from cxrscreen.models.registry import XrayClassifier, create_model
from cxrscreen.training.augment import BatchAugment
from cxrscreen.training.threads import configure_threads
from cxrscreen.training.trainer import to_input

SHARED = Path(os.environ.get("CXRSCREEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_DATA = [SHARED / "COVID-19_Radiography_Dataset", SHARED / "covid-chestxray-dataset" / "images"]
ARCH, CLASSES = "efficientnet_lite0", ["covid", "normal", "viral"]


def pick_images(data: list[Path], count: int) -> list[Path]:
    """``count`` files spread evenly over the sorted files of every folder (so every class and size appears)."""
    per_folder = [iter_image_files([folder]) for folder in data]
    picked: list[Path] = []
    for index, files in enumerate(per_folder):
        share = count // len(per_folder) + (1 if index < count % len(per_folder) else 0)
        picked += files[:: max(1, len(files) // share)][:share]
    return picked


class TrainStep:
    """One optimisation step of the classifier on a float batch (N, 1, S, S) in [0, 1]."""

    def __init__(self, model: XrayClassifier, seed: int = 0):
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.loss_fn = nn.CrossEntropyLoss()
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> None:
        y = torch.randint(0, len(CLASSES), (len(x),), generator=self.generator)
        loss = self.loss_fn(self.model(x.contiguous(memory_format=torch.channels_last)), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def raw_rate(step: TrainStep, batch_size: int, img_size: int, steps: int) -> float:
    """(a) images/s of forward+backward+step on one resident float batch."""
    x = torch.rand(batch_size, 1, img_size, img_size).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    for _ in range(steps):
        step(x)
    return steps * batch_size / (time.perf_counter() - start)


def pipeline_run(step: TrainStep, paths: list[Path], pp: Preprocessing, cache_dir: Path, batch_size: int) -> dict:
    """(b) one epoch through the real pipeline, preparation included; returns seconds and images/s."""
    start = time.perf_counter()
    prepared = load_prepared(paths, pp, cache_dir=cache_dir, progress=False)
    prepare_s = time.perf_counter() - start
    images = torch.from_numpy(prepared.images)
    augment = BatchAugment(seed=0)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    steps = len(images) // batch_size
    for index in range(steps):
        batch = order[index * batch_size : (index + 1) * batch_size]
        step(augment(to_input(images[batch], torch.device("cpu"))))
    total_s = time.perf_counter() - start
    return {"prepare_s": prepare_s, "train_s": total_s - prepare_s, "images_per_s": steps * batch_size / total_s,
            "errors": len(prepared.errors)}


class PillowDataset(Dataset):
    """What a notebook does: open, convert to grey, resize and scale each image when it is asked for."""

    def __init__(self, paths: list[Path], img_size: int):
        self.paths, self.img_size = paths, img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = Image.open(self.paths[index]).convert("L").resize((self.img_size, self.img_size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)


def plain_eval_rate(model: XrayClassifier, paths: list[Path], img_size: int, batch_size: int, workers: int) -> float:
    loader = DataLoader(PillowDataset(paths, img_size), batch_size=batch_size, num_workers=workers)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            torch.softmax(model(x), dim=1)
    return len(paths) / (time.perf_counter() - start)


def cxrscreen_eval_rate(checkpoint: Path, paths: list[Path], pp: Preprocessing, cache_dir: Path | None, batch_size: int) -> float:
    """Evaluation as ``cxrscreen evaluate`` does it; ``cache_dir=None`` decodes without the cache."""
    predictor = load_predictor(checkpoint, batch_size=batch_size)
    predictor.predict_prepared(np.zeros((2, pp.img_size, pp.img_size), np.float32))  # first-call set-up
    start = time.perf_counter()
    prepared = load_prepared(paths, pp, cache_dir=cache_dir, progress=False, use_cache=cache_dir is not None)
    predictor.predict_prepared(prepared.images.astype(np.float32) / 255.0)
    return len(paths) / (time.perf_counter() - start)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="real images to use (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs available)")
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA, help="folders to take images from")
    parser.add_argument("--plain-workers", type=int, default=0, help="DataLoader workers of the plain loop")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    settings = configure_threads(args.threads)
    pp = Preprocessing(img_size=args.img_size)
    paths = pick_images(args.data, args.images)
    steps = len(paths) // args.batch_size
    model = create_model(ARCH, len(CLASSES), pretrained=True).to(memory_format=torch.channels_last)
    step = TrainStep(model)
    raw_rate(step, args.batch_size, args.img_size, 1)  # warm-up: allocator, kernels

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        cache_dir = Path(tmp) / "cache"
        raw_before = raw_rate(step, args.batch_size, args.img_size, steps)
        cold = pipeline_run(step, paths, pp, cache_dir, args.batch_size)
        warm = pipeline_run(step, paths, pp, cache_dir, args.batch_size)
        raw_after = raw_rate(step, args.batch_size, args.img_size, steps)

        checkpoint = Path(tmp) / "model.pt"
        save_checkpoint(checkpoint, model, ModelMeta(arch=ARCH, classes=CLASSES, preprocessing=pp))
        plain_eval_rate(model, paths[: args.batch_size], args.img_size, args.batch_size, 0)  # warm-up
        evaluation = {
            "cxrscreen_warm_cache": cxrscreen_eval_rate(checkpoint, paths, pp, cache_dir, args.batch_size),
            "cxrscreen_no_cache": cxrscreen_eval_rate(checkpoint, paths, pp, None, args.batch_size),
            "plain_pillow": plain_eval_rate(model, paths, args.img_size, args.batch_size, args.plain_workers),
        }

    raw = (raw_before + raw_after) / 2
    results = {
        "model": ARCH, "img_size": args.img_size, "batch_size": args.batch_size, "images": len(paths),
        "torch_threads": settings.torch_threads, "cpu": cpu_name(),
        "train": {"raw": raw, "raw_before": raw_before, "raw_after": raw_after, "cold": cold, "warm": warm},
        "eval": evaluation,
    }
    print(f"{ARCH}, {args.img_size} px, batch {args.batch_size}, {len(paths)} real images, "
          f"{settings.torch_threads} torch threads, {results['cpu']}")
    print(f"{'training (forward+backward+step)':<52}{'images/s':>10}{'vs (a)':>9}")
    print(f"{'(a) float tensors already in memory':<52}{raw:>10.1f}{'100%':>9}   "
          f"(before {raw_before:.1f}, after {raw_after:.1f})")
    for name, run in (("cold", cold), ("warm", warm)):
        label = f"(b) real pipeline, {name} cache (prepare {run['prepare_s']:.2f} s)"
        print(f"{label:<52}{run['images_per_s']:>10.1f}{run['images_per_s'] / raw:>9.0%}")
    print(f"{'evaluation (forward only, decode included)':<52}{'images/s':>10}{'vs plain':>9}")
    plain = evaluation["plain_pillow"]
    for name, label in (("cxrscreen_warm_cache", "cxrscreen: warm cache, batched"),
                        ("cxrscreen_no_cache", "cxrscreen: no cache (thread-pool decode), batched"),
                        ("plain_pillow", f"plain PyTorch loop, Pillow per step ({args.plain_workers} workers)")):
        print(f"{label:<52}{evaluation[name]:>10.1f}{evaluation[name] / plain:>9.2f}x")
    target = "met" if warm["images_per_s"] >= 0.9 * raw else "NOT met"
    print(f"target (b, warm) >= 90% of (a): {target}")
    if args.json:
        from cxrscreen.io_utils import write_json

        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
