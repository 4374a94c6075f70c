"""``cxrscreen data summary | split | duplicates | cache | shard``: look at collections before training on them."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from cxrscreen.cli.batch import batch_exit_code, image_files
from cxrscreen.data.defaults import DEFAULT_IMG_SIZE, DEFAULT_MAX_DISTANCE
from cxrscreen.data.labels import LabelSet, parse_label_map
from cxrscreen.errors import ConfigError
from cxrscreen.io_utils import writable_folder

if TYPE_CHECKING:
    from cxrscreen.data.transforms import LungFinder, Preprocessing

LISTED_PAIRS = 20  # pairs `data duplicates` prints when it writes no CSV


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """``--classes``, ``--label-map`` and ``--include-lateral``: how a collection's labels become a task's classes."""
    parser.add_argument("--classes", default=None, help="task classes, e.g. covid,normal,viral (default) | covid,other | 4class")
    parser.add_argument("--label-map", action="append", metavar="FROM=TO", help="map a label onto a class (repeatable; default: the built-in label table only)")
    parser.add_argument("--include-lateral", action="store_true", help="keep lateral views (ieee8023)")


def load_task_dataset(paths: list[str], args: argparse.Namespace, allow_missing_classes: bool = False,
                      keep_unused_labels: bool = False):
    """The :class:`~cxrscreen.data.sources.Dataset` named by ``paths`` and the task flags of ``args``."""
    from cxrscreen.data.sources import load_dataset

    label_set = LabelSet.parse(args.classes, parse_label_map(args.label_map))
    return load_dataset(paths, label_set, frontal_only=not args.include_lateral,
                        allow_missing_classes=allow_missing_classes, keep_unused_labels=keep_unused_labels)


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="summarise, split, cache and shard dataset collections")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    summary = commands.add_parser("summary", help="images, patients, sources, sizes, near-duplicates per class")
    summary.add_argument("paths", nargs="*", metavar="PATH", help="collection folder or CSV manifest (layout detected)")
    summary.add_argument("--data", action="append", default=[], metavar="PATH", help="a collection, like PATH (repeatable, as in train; default: the PATHs only)")
    add_task_arguments(summary)
    summary.add_argument("--plots", metavar="DIR", help="write intensity histograms and sample grids per class here (default: no plots)")
    summary.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, help="pHash Hamming distance of near-duplicates")
    summary.add_argument("--no-dedup", action="store_true", help="skip hashing images for near-duplicates")
    summary.add_argument("--quiet", action="store_true", help="no progress bars")
    summary.set_defaults(func=run_summary)

    split = commands.add_parser("split", help="leakage-free train/val/test split (by patient and near-duplicate)")
    split.add_argument("--data", action="append", required=True, metavar="PATH", help="collection (repeat to combine)")
    add_task_arguments(split)
    split.add_argument("--out", default="split.csv", metavar="FILE", help="where to write the split (CSV)")
    split.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test fractions")
    split.add_argument("--seed", type=int, default=0, help="random seed of the split")
    split.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, help="pHash Hamming distance of near-duplicates")
    split.add_argument("--quiet", action="store_true", help="no progress bars")
    split.set_defaults(func=run_split)

    duplicates = commands.add_parser("duplicates", help="which images of one collection are already in another (near-duplicates)")
    duplicates.add_argument("--data", action="append", required=True, metavar="PATH",
                            help="a collection (repeat: each later one is compared with every earlier one)")
    duplicates.add_argument("--out", metavar="FILE", help="write every pair with its distance here (CSV; default: list the closest)")
    duplicates.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, help="pHash Hamming distance of near-duplicates (bits per 64)")
    duplicates.add_argument("--quiet", action="store_true", help="no progress bars")
    duplicates.set_defaults(func=run_duplicates)

    cache = commands.add_parser("cache", help="decode and preprocess images once into the on-disk cache")
    cache.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursed)")
    cache.add_argument("--img-size", type=int, default=DEFAULT_IMG_SIZE, metavar="PX", help="side of the square prepared image in pixels")
    cache.add_argument("--lung-mode", default="none", choices=["none", "crop", "mask", "crop_mask"], help="lung-focused preprocessing")
    cache.add_argument("--equalize", default="none", choices=["none", "hist", "clahe"], help="per-image intensity normalisation")
    cache.set_defaults(func=run_cache)

    shard = commands.add_parser("shard", help="write prepared images into WebDataset tar shards with a manifest")
    shard.add_argument("--data", action="append", required=True, metavar="PATH", help="dataset folder or CSV manifest (repeat to combine)")
    shard.add_argument("--out", required=True, metavar="DIR", help="folder for the shards and manifest.json")
    add_task_arguments(shard)
    shard.add_argument("--img-size", type=int, default=DEFAULT_IMG_SIZE, metavar="PX", help="side of the square prepared image in pixels")
    shard.add_argument("--lung-mode", default="none", choices=["none", "crop", "mask", "crop_mask"], help="lung-focused preprocessing")
    shard.add_argument("--equalize", default="none", choices=["none", "hist", "clahe"], help="per-image intensity normalisation")
    shard.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard")
    shard.add_argument("--split", metavar="FILE", help="a split.csv (data split, or a run's): shard only its training side, for train --shards (default: every image)")
    shard.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    shard.set_defaults(func=run_shard)


def run_summary(args: argparse.Namespace) -> int:
    from cxrscreen.data.dedup import hash_files
    from cxrscreen.data.summary import save_plots, summarize

    if args.plots:  # checked before anything is printed: no summary on stdout followed by a failure
        writable_folder(args.plots, "--plots")
    # Looking at a collection works whatever it holds: one class, or labels the task does not use.
    dataset = load_task_dataset([*args.paths, *args.data], args, keep_unused_labels=True)
    hashes = None if args.no_dedup else hash_files(dataset.paths, progress=not args.quiet).hashes
    print(summarize(dataset, hashes, args.max_distance).format())
    if args.plots:
        for path in save_plots(dataset, args.plots):
            print(f"wrote {path}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from cxrscreen.data.dedup import hash_files
    from cxrscreen.data.splits import make_split, parse_fractions, save_split

    fractions = parse_fractions(args.fractions)
    dataset = load_task_dataset(args.data, args)
    print(dataset.describe())
    hashed = hash_files(dataset.paths, progress=not args.quiet)
    split = make_split(dataset, hashed.hashes, args.seed, fractions, args.max_distance)
    print(split.describe())
    if hashed.errors:
        print(f"{len(hashed.errors)} images could not be hashed (kept, grouped by patient only), e.g. {hashed.errors[0][0]}")
    print(f"wrote {save_split(split, args.out)}")
    return 0


def run_duplicates(args: argparse.Namespace) -> int:
    from cxrscreen.data.dedup import hash_files
    from cxrscreen.data.overlap import Collection, collection_names, collection_overlap
    from cxrscreen.data.sources import scan_paths

    if len(args.data) < 2:
        raise ConfigError("--data: give two or more collections to compare")
    if not 0 <= args.max_distance <= 64:
        raise ConfigError(f"--max-distance must be between 0 and 64 bits, got {args.max_distance}")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise ConfigError(f"--out {args.out}: its folder does not exist")  # said before hashing, not after
    # Every image counts, lateral views too: the question is which pictures are already in another collection.
    scans = [scan_paths([path], frontal_only=False)[0] for path in args.data]
    collections = [Collection(name, scan.records) for name, scan in zip(collection_names(args.data), scans)]
    hashed = hash_files([r.path for c in collections for r in c.records], progress=not args.quiet)
    overlap = collection_overlap(collections, hashed.hashes, args.max_distance)
    print(overlap.format(listed_pairs=0 if args.out else LISTED_PAIRS))
    for path, reason in hashed.errors:
        print(f"{path}: {reason}", file=sys.stderr)
    if args.out:
        print(f"wrote {overlap.write_pairs(args.out)}")
    return 0


def cache_lung_finder(pp: Preprocessing) -> LungFinder | None:
    """The bundled segmenter when ``pp`` is lung-focused; imported only then (its ONNX export is made once with torch)."""
    if not pp.needs_lungs:
        return None
    from cxrscreen.lungs.finder import load_lung_finder

    return load_lung_finder()


def run_cache(args: argparse.Namespace) -> int:
    from cxrscreen.data.cache import build_cache
    from cxrscreen.data.transforms import Preprocessing

    pp = Preprocessing(img_size=args.img_size, lung_mode=args.lung_mode, equalize=args.equalize)
    report = build_cache(image_files(args.paths), pp, progress=sys.stderr.isatty(), lungs=cache_lung_finder(pp))
    for path, reason in report.failed:
        print(f"{path}: {reason}", file=sys.stderr)
    if report.cached or report.built:
        print(f"cache {report.cache_dir}: {report.cached} already cached, {report.built} built, {len(report.failed)} failed")
    return batch_exit_code(report.cached + report.built, len(report.failed))


def run_shard(args: argparse.Namespace) -> int:
    from cxrscreen.data.shards import write_shards
    from cxrscreen.data.transforms import Preprocessing

    pp = Preprocessing(img_size=args.img_size, lung_mode=args.lung_mode, equalize=args.equalize)
    dataset, side = load_task_dataset(args.data, args), "all"
    if args.split:  # the split's training side, of the images the split lists (as training reads it)
        from cxrscreen.data.splits import load_split_of

        dataset, side = load_split_of(args.split, dataset, ", ".join(args.data))[0].part("train"), "train"
    report = write_shards(dataset, pp, args.out, args.shard_size, progress=sys.stderr.isatty(), lungs=cache_lung_finder(pp),
                          overwrite=args.overwrite, side=side)
    for path, reason in report.failed:
        print(f"{path}: {reason} (left out)", file=sys.stderr)
    print(f"{report.samples} images in {len(report.shards)} shard(s); manifest: {report.manifest}")
    return batch_exit_code(report.samples, len(report.failed))
