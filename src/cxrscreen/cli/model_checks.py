"""``cxrscreen audit``, ``cxrscreen crossval`` and ``cxrscreen report``: is the model reading the lungs or the hospital?"""

from __future__ import annotations

import argparse
import sys

from cxrscreen.data.defaults import DEFAULT_MAX_DISTANCE
from cxrscreen.errors import ConfigError

# Flags of `cxrscreen train` that make no sense for cross-validation, whose folds make their own splits and runs.
NOT_FOR_CROSSVAL = ("resume", "nproc", "split")


def register(subparsers: argparse._SubParsersAction) -> None:
    a = subparsers.add_parser(
        "audit",
        help="shortcut audit: score the images as they are, with the lungs hidden and with only the lungs kept",
        description="Does the model rely on what lies outside the lungs? Scores the images as they are, with the lung "
        "fields hidden and with only the lung fields kept, measures the Grad-CAM mass inside the lungs and, with "
        "several sources, whether the model's features reveal the source. Writes audit.json.",
    )
    a.add_argument("--model", metavar="MODEL", help="run directory, checkpoint or a bundled model's name (`cxrscreen models`; default: the bundled default)")
    a.add_argument("--data", action="append", metavar="PATH", help="collection to audit (repeat to combine; default: the run's training data)")
    a.add_argument("--split", default="test", choices=["test", "val", "train", "all"],
                   help="side of the run's split when --data is its training data")
    a.add_argument("--max-images", type=int, metavar="N", help="audit a random sample of at most N images (default: all)")
    a.add_argument("--mask-dilation", type=float, default=0.04, metavar="F", help="grow the lung mask by F x the image side")
    a.add_argument("--gradcam-per-class", type=int, default=8, metavar="N", help="images per class for the Grad-CAM lung share")
    a.add_argument("--segmenter", metavar="FILE", help="lung segmenter weight file (default: the bundled one)")
    a.add_argument("--out", metavar="DIR", help="folder for audit.json (default: RUN_DIR/audit)")
    a.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the CIs")
    a.add_argument("--seed", type=int, default=0, help="random seed of the sample and the bootstrap resamples")
    a.add_argument("--dedup-distance", type=int, default=DEFAULT_MAX_DISTANCE, metavar="BITS",
                   help="pHash Hamming distance at or below which an image counts as a training near-duplicate")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=run_audit)

    r = subparsers.add_parser("report", help="write RUN_DIR/report.html: data, curves, metrics, audit, Grad-CAM",
                              description="One self-contained HTML page about a training run (figures embedded).")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/report.html)")
    r.add_argument("--gradcam-per-class", type=int, default=3, metavar="N",
                   help="Grad-CAM overlays per class, for correct and for wrong predictions each")
    r.set_defaults(func=run_report)

    c = subparsers.add_parser(
        "crossval", parents=[training_flags()], conflict_handler="resolve",
        help="leave-one-source-out: train on all sources but one, test on the one left out",
        description="For each source: train on the other sources (with the flags of `cxrscreen train`) and evaluate on "
        "the source left out. Only sources holding COVID and non-COVID images give a COVID-vs-rest AUROC.",
    )
    c.add_argument("--leave-out", default="source", choices=["source", "collection"],
                   help="leave out each source (e.g. ieee8023/Italy) or each collection (ieee8023)")
    c.add_argument("--out", default="runs/crossval", metavar="DIR", help="folder for the folds and crossval.json")
    c.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the CIs")
    c.set_defaults(func=run_crossval)


def training_flags() -> argparse.ArgumentParser:
    """The parser of `cxrscreen train`, so that crossval takes the same training flags without repeating them."""
    from cxrscreen.cli import train as train_cli

    commands = argparse.ArgumentParser(add_help=False).add_subparsers()
    train_cli.register(commands)
    return commands.choices["train"]


def run_audit(args: argparse.Namespace) -> int:
    from cxrscreen.evaluation.audit import AuditConfig, audit_model, audit_report

    cfg = AuditConfig(
        data=args.data or [],
        model=args.model,
        split=args.split,
        max_images=args.max_images,
        mask_dilation=args.mask_dilation,
        gradcam_per_class=args.gradcam_per_class,
        segmenter=args.segmenter,
        out=args.out,
        n_resamples=args.bootstrap,
        seed=args.seed,
        dedup_distance=args.dedup_distance,
        progress=not args.quiet,
    )
    print(audit_report(audit_model(cfg, log=lambda line: print(line, file=sys.stderr))))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cxrscreen.evaluation.report import write_report

    if args.gradcam_per_class < 0:
        raise ConfigError(f"--gradcam-per-class must be 0 or more, got {args.gradcam_per_class}")
    path = write_report(args.run_dir, args.out, args.gradcam_per_class, log=lambda line: print(line, file=sys.stderr))
    print(f"wrote {path}")
    return 0


def run_crossval(args: argparse.Namespace) -> int:
    from cxrscreen.cli.train import config_from_args
    from cxrscreen.evaluation.crossval import crossval_report, leave_one_source_out

    given = [f"--{name}" for name in NOT_FOR_CROSSVAL if getattr(args, name, None)]
    if given:
        raise ConfigError(f"{', '.join(given)}: not available with crossval (each fold makes its own split and run)")
    cfg = config_from_args(args)
    result = leave_one_source_out(cfg, args.out, args.leave_out, args.bootstrap, progress=not args.quiet,
                                  log=lambda line: print(line, file=sys.stderr))
    print(crossval_report(result))
    return 0
