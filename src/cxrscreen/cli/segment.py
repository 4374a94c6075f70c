"""``cxrscreen segment PATH... --out DIR``: lung masks and overlays; ``cxrscreen segment train``: train the segmenter."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cxrscreen.cli.batch import UniqueStems, batch_exit_code, image_files, progress, say
from cxrscreen.errors import ConfigError, CxrError
from cxrscreen.io_utils import atomic_write

SHARED_DATA = Path(os.environ.get("CXRSCREEN_SHARED_DATA", "../shared/data")) / "lung_segmentation"
TRAIN_ONLY = ("data", "test_data", "img_size", "epochs", "threads")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="find the lungs: mask and overlay PNGs per image (or `segment train` to train the segmenter)",
        description="Write <stem>_lungs.png (mask, 255 = lung) and <stem>_lungs_overlay.png per X-ray into --out. "
        "`cxrscreen segment train [--data DIR] [--img-size N] [--epochs N] [--out FILE]` trains the segmenter.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="X-ray files or folders (recursed); or `train`")
    parser.add_argument("--out", help="output folder (segmenting) or weight file (training, default lung_unet.pt)")
    parser.add_argument("--model", help="segmenter weight file (.pt, or .onnx with --backend onnx); default: bundled")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="network runtime")
    train = parser.add_argument_group("training (segment train)")
    train.add_argument("--data", help=f"images/ + masks/ pairs (default {SHARED_DATA / 'montgomery_shenzhen'})")
    train.add_argument("--test-data", help=f"pairs from another source, evaluated once (default {SHARED_DATA / 'jsrt'})")
    train.add_argument("--img-size", type=int, choices=(128, 160, 192, 256), help="network input side (default 128)")
    train.add_argument("--epochs", type=int, help="training epochs (default 30)")
    train.add_argument("--threads", type=int, help="torch CPU threads (default 2)")
    parser.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    if args.paths == ["train"]:
        return run_train(args)
    given = [f"--{name.replace('_', '-')}" for name in TRAIN_ONLY if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only for `cxrscreen segment train`")
    if not args.out:
        raise ConfigError("--out: an output folder is required")
    from cxrscreen.data.imageio import load_xray
    from cxrscreen.models.segmenter import load_segmenter

    files = image_files(args.paths)
    segmenter = load_segmenter(args.model, backend=args.backend)
    out_dir = Path(args.out)
    stems = UniqueStems()
    failed = 0
    with progress(len(files), "segmenting") as bar:
        for path in files:
            bar.update()
            try:
                image = load_xray(path)
            except CxrError as exc:
                say(str(exc), sys.stderr)
                failed += 1
                continue
            lungs = segmenter.segment(image)
            stem = stems(path)
            write_png(out_dir / f"{stem}_lungs.png", lungs.mask.astype(np.uint8) * 255)
            write_png(out_dir / f"{stem}_lungs_overlay.png", lung_overlay(image, lungs.mask))
            verdict = "lungs found" if lungs.plausible else f"NOT plausible: {lungs.reason}"
            say(f"{path}\tlung area {lungs.area_fraction:.1%}\t{verdict}", sys.stdout)
    return batch_exit_code(len(files) - failed, failed)


def run_train(args: argparse.Namespace) -> int:
    from cxrscreen.models.segmenter import SegmenterTrainConfig, train_segmenter

    if args.model:
        raise ConfigError("--model: not used by `cxrscreen segment train` (use --out for the new file)")
    overrides = {name: getattr(args, name) for name in ("img_size", "epochs", "threads") if getattr(args, name)}
    cfg = SegmenterTrainConfig(
        data=args.data or str(SHARED_DATA / "montgomery_shenzhen"),
        test_data=args.test_data or str(SHARED_DATA / "jsrt"),
        out=args.out or "lung_unet.pt",
        **overrides,
    )
    info = train_segmenter(cfg)
    test = info.get("test") or {}
    if test:
        print(f"test Dice mean {test['dice_mean']:.4f} median {test['dice_median']:.4f} min {test['dice_min']:.4f}")
    return 0


def lung_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey X-ray (H, W) in [0, 1] with the lungs tinted green and outlined: uint8 RGB (H, W, 3)."""
    grey = np.repeat(image[..., None], 3, axis=2)
    tint = np.array([0.1, 0.9, 0.3], dtype=np.float32)
    out = np.where(mask[..., None], 0.65 * grey + 0.35 * tint, grey)
    from scipy import ndimage  # here: --help and the other commands need not load scipy
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 200))
    out[edge] = tint
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as fh:
        Image.fromarray(array).save(fh, format="PNG")
