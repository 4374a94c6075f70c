"""``cxrscreen segment PATH... --out DIR``: lung masks and overlays; ``cxrscreen segment train``: train the segmenter."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cxrscreen.cli.batch import UniqueStems, batch_exit_code, image_files, progress, say
from cxrscreen.errors import ConfigError, CxrError
from cxrscreen.io_utils import atomic_write, writable_folder
from cxrscreen.lungs.defaults import CLI_OUT, TEST_DATA, TRAIN_DATA

if TYPE_CHECKING:
    import numpy as np

TRAIN_ONLY = ("data", "test_data", "img_size", "epochs", "threads")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="find the lungs: mask and overlay PNGs per image (or `segment train` to train the segmenter)",
        description="Write <stem>_lungs.png (mask, 255 = lung) and <stem>_lungs_overlay.png per X-ray into --out. "
        "`cxrscreen segment train [--data DIR] [--img-size N] [--epochs N] [--out FILE]` trains the segmenter.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="X-ray files or folders (recursed); or `train`")
    parser.add_argument("--out", help=f"output folder (segmenting) or weight file (training, default {CLI_OUT})")
    parser.add_argument("--model", help="segmenter weight file (.pt, or .onnx with --backend onnx); default: bundled")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="network runtime")
    train = parser.add_argument_group("training (segment train)")
    train.add_argument("--data", help=f"images/ + masks/ pairs (default {TRAIN_DATA})")
    train.add_argument("--test-data", help=f"pairs from another source, evaluated once (default {TEST_DATA})")
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
    from cxrscreen.data.imageio import to_uint8
    from cxrscreen.lungs.overlay import lung_overlay
    from cxrscreen.lungs.segmenter import load_segmenter

    files = image_files(args.paths)
    out_dir = writable_folder(args.out, "--out")  # before the network loads and the first image is read
    segmenter = load_segmenter(args.model, backend=args.backend)
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
            write_png(out_dir / f"{stem}_lungs.png", to_uint8(lungs.mask))
            write_png(out_dir / f"{stem}_lungs_overlay.png", lung_overlay(image, lungs.mask))
            verdict = "lungs found" if lungs.plausible else f"NOT plausible: {lungs.reason}"
            say(f"{path}\tlung area {lungs.area_fraction:.1%}\t{verdict}", sys.stdout)
    return batch_exit_code(len(files) - failed, failed)


def run_train(args: argparse.Namespace) -> int:
    from cxrscreen.lungs.training import SegmenterTrainConfig, train_segmenter

    if args.model:
        raise ConfigError("--model: not used by `cxrscreen segment train` (use --out for the new file)")
    given = ("data", "test_data", "img_size", "epochs", "threads")
    overrides = {name: getattr(args, name) for name in given if getattr(args, name)}
    cfg = SegmenterTrainConfig(out=args.out or CLI_OUT, **overrides)
    info = train_segmenter(cfg)
    test = info.get("test") or {}
    if test:
        print(f"test Dice mean {test['dice_mean']:.4f} median {test['dice_median']:.4f} min {test['dice_min']:.4f}")
    return 0


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_write(path, "wb") as fh:
        Image.fromarray(array).save(fh, format="PNG")
