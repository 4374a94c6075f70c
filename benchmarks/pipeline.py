"""Input-pipeline benchmark: is training on this CPU limited by the network rather than by the data?

    .venv/bin/python benchmarks/pipeline.py [--images 256] [--batch-size 32] [--img-size 224] [--threads N]
        [--data DIR ...] [--plain-workers 0] [--json FILE]

For efficientnet_lite0 (ImageNet weights), in one run, on a few hundred real X-rays:

- (a) forward + backward + AdamW step on a batch already in memory as a float tensor: the network's ceiling;
- (b) the real training loop: ``load_prepared`` (disk cache) -> uint8 array -> float tensor -> ``BatchAugment``
  -> forward/backward/step, for one epoch over the images, with an empty cache (decoding counted) and with a
  warm one. Target: warm >= 90% of (a);
- evaluation (forward only): cxrscreen (``load_prepared`` + ``Predictor.predict_prepared``, batched) against a
  plain PyTorch loop whose Dataset opens, converts and resizes every image with Pillow at each step, as
  notebooks do; same network, same batch size.

Steps of (a) and (b), and batches of the two evaluation loops, alternate (each going first in turn), so that
other work on a shared CPU slows both sides alike. The epoch's training time is ``--train-steps`` timed steps
scaled to the image count (the step does not depend on which images it gets). The cache goes to a fresh
temporary folder (removed at the end), so "cold" is really cold.
"""

from __future__ import annotations

import argparse
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

from cxrscreen.data.cache import PreparedImages, load_prepared
from cxrscreen.data.imageio import iter_image_files, to_float
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from cxrscreen.models.factory import create_model
from cxrscreen.models.registry import XrayClassifier
from cxrscreen.training.augment import BatchAugment
from cxrscreen.threads import configure_threads
from cxrscreen.training.steps import to_input

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


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def load_seconds(paths: list[Path], pp: Preprocessing, cache_dir: Path | None) -> tuple[float, PreparedImages]:
    """Seconds ``load_prepared`` takes (``cache_dir=None``: no cache) and what it returns."""
    start = time.perf_counter()
    prepared = load_prepared(paths, pp, cache_dir=cache_dir, progress=False, use_cache=cache_dir is not None)
    return time.perf_counter() - start, prepared


def train_seconds(step: TrainStep, images: np.ndarray, batch_size: int, steps: int) -> tuple[float, float]:
    """Seconds per image of (a) steps on one resident float batch and (b) steps through the real pipeline
    (uint8 batch -> float tensor -> BatchAugment -> step), interleaved so that a shared CPU slows both alike."""
    resident = torch.rand(batch_size, 1, images.shape[1], images.shape[2]).contiguous(memory_format=torch.channels_last)
    uint8 = torch.from_numpy(images)
    augment = BatchAugment(seed=0)
    order = torch.randperm(len(uint8), generator=torch.Generator().manual_seed(0))
    seconds = {"raw": 0.0, "pipeline": 0.0}
    for index in range(steps):
        batch = order[torch.arange(index * batch_size, (index + 1) * batch_size) % len(uint8)]
        runs = {
            "raw": lambda: step(resident),
            "pipeline": lambda: step(augment(to_input(uint8[batch], torch.device("cpu")))),
        }
        for name in sorted(runs, reverse=index % 2 == 1):  # alternate which goes first
            seconds[name] += timed(runs[name])
    images_seen = steps * batch_size
    return seconds["raw"] / images_seen, seconds["pipeline"] / images_seen


class PillowDataset(Dataset):
    """What a notebook does: open, convert to grey, resize and scale each image when it is asked for."""

    def __init__(self, paths: list[Path], img_size: int):
        self.paths, self.img_size = paths, img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = Image.open(self.paths[index]).convert("L").resize((self.img_size, self.img_size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)


def eval_seconds(model: XrayClassifier, predictor, images: np.ndarray, paths: list[Path], batch_size: int,
                 workers: int) -> tuple[float, float]:
    """Seconds of (cxrscreen) ``predict_prepared`` on the prepared images and of (plain) a DataLoader over
    :class:`PillowDataset` + forward + softmax, batch by batch, interleaved."""
    loader = iter(DataLoader(PillowDataset(paths, images.shape[1]), batch_size=batch_size, num_workers=workers))
    model.eval()
    seconds = {"cxrscreen": 0.0, "plain": 0.0}
    with torch.no_grad():
        for index, start in enumerate(range(0, len(images), batch_size)):
            chunk = images[start : start + batch_size]
            runs = {
                "cxrscreen": lambda: predictor.predict_prepared(to_float(chunk)),
                "plain": lambda: torch.softmax(model(next(loader)), dim=1),
            }
            for name in sorted(runs, reverse=index % 2 == 1):  # alternate which goes first
                seconds[name] += timed(runs[name])
    return seconds["cxrscreen"], seconds["plain"]


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
    parser.add_argument("--images", type=int, default=256, help="real images to prepare and evaluate (default 256)")
    parser.add_argument("--train-steps", type=int, default=4, help="training steps timed for (a) and for (b)")
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
    model = create_model(ARCH, len(CLASSES), pretrained=True).to(memory_format=torch.channels_last)
    step = TrainStep(model)

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        cache_dir = Path(tmp) / "cache"
        cold_s, prepared = load_seconds(paths, pp, cache_dir)
        images, paths = prepared.images[:], [paths[i] for i in prepared.ok]
        warm_s, _ = load_seconds(paths, pp, cache_dir)
        no_cache_s, _ = load_seconds(paths, pp, None)
        train_seconds(step, images, args.batch_size, 1)  # warm-up: allocator, kernels
        raw_per_image, pipeline_per_image = train_seconds(step, images, args.batch_size, args.train_steps)

        checkpoint = Path(tmp) / "model.pt"
        save_checkpoint(checkpoint, model, ModelMeta(arch=ARCH, classes=CLASSES, preprocessing=pp))
        predictor = load_predictor(checkpoint, batch_size=args.batch_size)
        # The plain loop gets the same network, loaded the same way (a notebook's model.load_state_dict).
        model = load_checkpoint(checkpoint)[0]
        eval_seconds(model, predictor, images[: args.batch_size], paths[: args.batch_size], args.batch_size, 0)
        forward_s, plain_s = eval_seconds(model, predictor, images, paths, args.batch_size, args.plain_workers)

    n = len(images)
    # One epoch over the n images: preparation + n images through the (timed) training step.
    train = {
        "raw": 1 / raw_per_image,
        "cold": n / (cold_s + n * pipeline_per_image),
        "warm": n / (warm_s + n * pipeline_per_image),
        "pipeline_steps_only": 1 / pipeline_per_image,
    }
    evaluation = {
        "cxrscreen_warm_cache": n / (warm_s + forward_s),
        "cxrscreen_no_cache": n / (no_cache_s + forward_s),
        "plain_pillow": n / plain_s,
    }
    results = {
        "model": ARCH, "img_size": args.img_size, "batch_size": args.batch_size, "images": n,
        "train_steps": args.train_steps, "torch_threads": settings.torch_threads, "cpu": cpu_name(),
        "load_s": {"cold_cache": cold_s, "warm_cache": warm_s, "no_cache": no_cache_s},
        "train_images_per_s": train, "eval_images_per_s": evaluation,
    }
    print(f"{ARCH}, {args.img_size} px, batch {args.batch_size}, {n} real images, {settings.torch_threads} torch "
          f"threads, {results['cpu']}")
    print(f"preparing {n} images: cold cache {cold_s:.2f} s, warm cache {warm_s:.2f} s, no cache {no_cache_s:.2f} s")
    print(f"{'training, one epoch (forward+backward+AdamW step)':<56}{'images/s':>10}{'vs (a)':>9}")
    rows = [
        ("(a) float batch already in memory", train["raw"]),
        ("(b) real pipeline, cold cache (decode counted)", train["cold"]),
        ("(b) real pipeline, warm cache", train["warm"]),
    ]
    for label, rate in rows:
        print(f"{label:<56}{rate:>10.2f}{rate / train['raw']:>9.0%}")
    print(f"{'evaluation (forward only, decode/load counted)':<56}{'images/s':>10}{'vs plain':>9}")
    rows = [
        ("cxrscreen: warm cache, batched", evaluation["cxrscreen_warm_cache"]),
        ("cxrscreen: no cache (thread-pool decode), batched", evaluation["cxrscreen_no_cache"]),
        (f"plain PyTorch loop, Pillow per step ({args.plain_workers} workers)", evaluation["plain_pillow"]),
    ]
    for label, rate in rows:
        print(f"{label:<56}{rate:>10.2f}{rate / evaluation['plain_pillow']:>8.2f}x")
    verdict = "met" if train["warm"] >= 0.9 * train["raw"] else "NOT met"
    print(f"target (b, warm) >= 90% of (a): {verdict}")
    if args.json:
        from cxrscreen.io_utils import write_json

        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
