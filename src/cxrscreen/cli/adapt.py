"""``cxrscreen adapt``: validate a model on a site's labelled X-rays and fine-tune it there."""

from __future__ import annotations

import argparse

from cxrscreen.data.defaults import DEFAULT_MAX_DISTANCE


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapt",
        help="check a model on a site's own labelled X-rays and fine-tune it there (cross-validated)",
        description="Score a model on a site's labelled images (before), fine-tune it there in k folds by patient "
        "(after, on the same images), draw a learning curve, and save the model fine-tuned on all of them with its "
        "lineage, temperature, threshold and OOD guard. A screening aid, not a diagnosis.",
    )
    p.add_argument("--model", metavar="MODEL", help="model to adapt: run directory, checkpoint or a bundled model's name (`cxrscreen models`; default: the bundled default)")
    p.add_argument("--data", action="append", required=True, metavar="PATH", help="the site's labelled images (repeat to combine)")
    p.add_argument("--classes", help="the site's classes, e.g. covid,other (default: the model's); merged classes start from the model's head rows")
    p.add_argument("--label-map", action="append", metavar="FROM=TO", help="map a site label onto a class (repeatable; default: the built-in label table only)")
    p.add_argument("--positive", default="covid", help="class whose operating threshold is set and whose AUROC is reported")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (by patient and near-duplicate group)")
    p.add_argument("--target-sensitivity", type=float, default=0.95, help="sensitivity the positive class's threshold is set for")
    p.add_argument("--sizes", default="10,25,50,100", help="learning curve: labelled images per class (none = no curve)")
    p.add_argument("--repeats", type=int, default=3, help="learning curve: draws per size")
    p.add_argument("--train-blocks", type=int, default=3, help="last backbone blocks fine-tuned (with the final convolution and the head)")
    p.add_argument("--epochs", type=int, default=12, help="most epochs per fine-tuning (early stopping on an inner split)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--backbone-lr-factor", type=float, default=0.3, metavar="F",
                   help="the fine-tuned backbone layers learn at --lr times F (the head at --lr)")
    p.add_argument("--by", choices=["source"], help="also print the figures per source (default: pooled only)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds, draws and fine-tuning")
    p.add_argument("--dedup-distance", type=int, default=DEFAULT_MAX_DISTANCE, metavar="BITS",
                   help="pHash distance at or below which an image counts as a near-duplicate")
    p.add_argument("--include-lateral", action="store_true", help="also use lateral views (default: frontal views only)")
    p.add_argument("--name", help="name of the adapted model (default: <parent name>-adapted)")
    p.add_argument("--out", default="runs/adapt", metavar="DIR", help="output folder: best.pt, adapt.json, predictions.csv, learning_curve.png")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier adaptation in --out")
    p.add_argument("--num-threads", type=int, metavar="N", help="torch threads (default: the idle CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or step log")
    p.set_defaults(func=run_adapt)


def run_adapt(args: argparse.Namespace) -> int:
    from cxrscreen.adaptation import AdaptConfig, adapt
    from cxrscreen.adaptation.config import parse_sizes
    from cxrscreen.adaptation.tables import adapt_report
    from cxrscreen.data.labels import parse_label_map

    cfg = AdaptConfig(
        data=args.data, out=args.out, model=args.model, classes=args.classes, label_map=parse_label_map(args.label_map),
        positive=args.positive.strip().lower(), folds=args.folds, target_sensitivity=args.target_sensitivity,
        sizes=parse_sizes(args.sizes), repeats=args.repeats, train_blocks=args.train_blocks, epochs=args.epochs,
        lr=args.lr, backbone_lr_factor=args.backbone_lr_factor, by_source=args.by == "source", n_resamples=args.bootstrap, seed=args.seed,
        dedup_distance=args.dedup_distance, frontal_only=not args.include_lateral, num_threads=args.num_threads, name=args.name, overwrite=args.overwrite,
        progress=not args.quiet,
    )
    result = adapt(cfg, log=(lambda _msg: None) if args.quiet else print)
    print(adapt_report(result.report))
    print(f"\nadapted model: {result.checkpoint}")
    return 0
