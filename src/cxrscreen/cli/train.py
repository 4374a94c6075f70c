"""``cxrscreen train`` and ``cxrscreen models``."""

from __future__ import annotations

import argparse
import os

from cxrscreen.data.labels import parse_label_map
from cxrscreen.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a classifier by transfer learning")
    p.add_argument("--data", action="append", metavar="PATH", help="dataset folder or CSV manifest (repeat to combine; required unless --resume or --finish)")
    p.add_argument("--classes", default="covid,normal,viral", help="task classes: covid,normal,viral | covid,other | covid,normal,viral,lung_infection")
    p.add_argument("--label-map", action="append", metavar="FROM=TO",
                   help="extra label mapping onto a class (repeatable; default: the built-in label table only)")
    p.add_argument("--model", default="efficientnet_lite0", help="architecture (see `cxrscreen models`)")
    p.add_argument("--no-pretrained", action="store_true", help="random initialisation instead of ImageNet weights")
    p.add_argument("--img-size", type=int, metavar="PX", help="side of the square network input in pixels (default: the architecture's, see `cxrscreen models`)")
    p.add_argument("--lung-mode", default="none", choices=["none", "crop", "mask", "crop_mask"], help="lung-focused preprocessing")
    p.add_argument("--equalize", default="none", choices=["none", "hist", "clahe"], help="per-image intensity normalisation")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="most training epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per optimisation step (per process with --nproc)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate after warm-up (then cosine decay)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--patience", type=int, default=3, help="early stopping: epochs without improvement")
    p.add_argument("--monitor", default="macro_f1", choices=["macro_f1", "auc"],
                   help="validation metric that picks the best epoch and drives early stopping")
    p.add_argument("--augment", default="default", help="augmentation preset: default, none or strong")
    p.add_argument("--balance", default="none", choices=["none", "class", "class_source", "source"],
                   help="draw each epoch evenly over classes, collections or (class, collection) cells, with "
                   "replacement where a cell is small; none: a plain shuffle")
    p.add_argument("--balance-cap", type=float, default=10.0, metavar="X",
                   help="with --balance: a cell is drawn at most X times its size per epoch; its unused share goes to the others")
    p.add_argument("--adversary", default="none", choices=["none", "source"],
                   help="source: a head telling the collection among images of the same class, behind gradient "
                   "reversal, so that features do not tell the collection (needs a class drawn from 2 or more collections)")
    p.add_argument("--adversary-weight", type=float, default=0.1, metavar="W", help="weight of the adversary's loss")
    p.add_argument("--style", default="none", metavar="KINDS",
                   help="augmentation that breaks a scanner's look, comma-separated: histmatch (grey levels of an image "
                   "of another collection), tone (random tone curve), mixstyle (feature statistics mixed across "
                   "collections in early layers); none: no such augmentation")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split, initialisation and augmentation")
    p.add_argument("--split", metavar="FILE", help="reuse a saved split.csv (default: a new split by patient and near-duplicate)")
    p.add_argument("--shards", metavar="DIR_OR_URL",
                   help="stream the training images from these shards (data shard --split, written from the same "
                   "--split) instead of the cache; validation and test images come from the cache (default: the cache)")
    p.add_argument("--shard-workers", type=int, default=2, metavar="N",
                   help="with --shards: loader processes per rank reading them (0: none, in the training process)")
    p.add_argument("--limit-per-class", type=int, metavar="N", help="use at most N images per class (default: all)")
    p.add_argument("--include-lateral", action="store_true", help="keep lateral views (ieee8023)")
    p.add_argument("--on-bad-image", default="skip", choices=["skip", "fail"],
                   help="an unreadable training image is left out and listed (skip) or stops the run (fail)")
    p.add_argument("--out", default="runs/default", metavar="RUN_DIR", help="run directory for checkpoints, metrics and report")
    p.add_argument("--name", help="model name stored in the checkpoint (default: cxrscreen-<architecture>-<N>class)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch (default: start a new run)")
    p.add_argument("--overwrite", action="store_true", help="replace a run directory that holds a run")
    p.add_argument("--finish", metavar="RUN_DIR",
                   help="complete a run stopped after its best checkpoint was saved (no last.pt needed): calibration, "
                   "OOD guard, training hashes, test metrics, summary and report; no further training (default: train)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train; auto = cuda when available")
    p.add_argument("--no-amp", action="store_true", help="full float32 on a GPU instead of bf16/fp16 autocast")
    p.add_argument("--num-threads", type=int, metavar="N", help="torch threads per process (default: torch's own choice)")
    p.add_argument("--nproc", type=int, metavar="N", help="launch N DDP processes with torchrun (default: one process)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    g = subparsers.add_parser(
        "refit-guard",
        help="fit a finished run's out-of-distribution guard again (checkpoints from an older cxrscreen)",
        description="Fit the out-of-distribution guard of a finished run again on its own training and validation "
        "images (saved config and split) and store it in the checkpoint; weights and metrics are unchanged.",
    )
    g.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding config.json and split.csv")
    g.add_argument("--checkpoint", metavar="FILE", help="checkpoint to update (default RUN_DIR/best.pt)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.set_defaults(func=run_refit_guard)


def config_from_args(args: argparse.Namespace):
    from cxrscreen.training.config import TrainConfig

    return TrainConfig(
        data=args.data or [],
        out=args.out,
        classes=args.classes,
        label_map=parse_label_map(args.label_map),
        model=args.model,
        pretrained=not args.no_pretrained,
        img_size=args.img_size,
        lung_mode=args.lung_mode,
        equalize=args.equalize,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        monitor=args.monitor,
        augment=args.augment,
        balance=args.balance,
        balance_cap=args.balance_cap,
        adversary=args.adversary,
        adversary_weight=args.adversary_weight,
        style=args.style,
        seed=args.seed,
        split=args.split,
        shards=args.shards,
        shard_workers=args.shard_workers,
        limit_per_class=args.limit_per_class,
        frontal_only=not args.include_lateral,
        on_bad_image=args.on_bad_image,
        name=args.name,
        device=args.device,
        amp=not args.no_amp,
        num_threads=args.num_threads,
    )


def without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def run_train(args: argparse.Namespace) -> int:
    from cxrscreen.models.factory import get_spec
    from cxrscreen.training.distributed import launch_torchrun
    from cxrscreen.training.config import load_run_config
    from cxrscreen.training.trainer import finish_run, train

    if args.nproc and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args.nproc, without_nproc(args.argv[args.argv.index("train"):]), args.device)
    if args.finish:
        if args.resume:
            raise ConfigError("--finish and --resume cannot be combined")
        result = finish_run(args.finish, args.device, args.num_threads, progress=not args.quiet)
        cfg = load_run_config(args.finish)
    else:
        cfg = load_run_config(args.resume) if args.resume else config_from_args(args)
        get_spec(cfg.model)
        result = train(cfg, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        from cxrscreen.evaluation.report import write_report

        test = result.test_metrics
        acc = test.get("accuracy", {}).get("value")
        print(f"best epoch {result.best_epoch} ({cfg.monitor} {result.best_score:.4f}); test accuracy "
              f"{acc if acc is None else f'{acc:.4f}'}; model: {result.checkpoint}")
        print(f"report: {write_report(result.run_dir, log=lambda _msg: None)}")
    return 0


def run_refit_guard(args: argparse.Namespace) -> int:
    from cxrscreen.training.refit_guard import refit_ood_guard

    refit_ood_guard(args.run_dir, args.checkpoint, progress=not args.quiet)
    return 0
