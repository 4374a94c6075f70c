"""``cxrscreen evaluate``: metrics with bootstrap CIs, calibration, external and per-source evaluation."""

from __future__ import annotations

import argparse

from cxrscreen.data.defaults import DEFAULT_MAX_DISTANCE
from cxrscreen.run_dir import RunDir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model with 95%% bootstrap CIs, internally and on other collections",
        description="Evaluate a model on its test split or on other collections (near-duplicates of its training "
        "images left out), with bootstrap CIs, calibration and figures. A screening aid, not a diagnosis.",
    )
    p.add_argument("--model", metavar="MODEL", help="run directory, checkpoint or a bundled model's name (`cxrscreen models`; default: the bundled default)")
    p.add_argument("--data", action="append", metavar="PATH", help="collection to evaluate (repeat to combine; default: the run's training data)")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "all"],
                   help="side of the run's split when --data is its training data; all = every image")
    p.add_argument("--external", nargs="+", action="extend", metavar="PATH",
                   help="other collections to evaluate and compare with --data (default: none)")
    p.add_argument("--by", choices=["source"], help="also report metrics per source (default: overall only)")
    p.add_argument("--classes", help="evaluate on these classes (e.g. covid,other), merging the model's probabilities (default: the model's classes)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap resamples")
    p.add_argument("--dedup-distance", type=int, default=DEFAULT_MAX_DISTANCE, metavar="BITS",
                   help="pHash Hamming distance at or below which an image counts as a training near-duplicate")
    p.add_argument("--label-map", action="append", metavar="FROM=TO",
                   help="map a collection's label onto one of the model's classes (repeatable; default: the built-in label table only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from cxrscreen.data.labels import parse_label_map
    from cxrscreen.evaluation.evaluate import EvaluationConfig, evaluate_model, find_run_dir
    from cxrscreen.evaluation.tables import evaluation_report

    cfg = EvaluationConfig(
        data=args.data or [],
        model=args.model,
        split=args.split,
        external=args.external or [],
        by_source=args.by == "source",
        classes=args.classes,
        out=args.out,
        n_resamples=args.bootstrap,
        seed=args.seed,
        dedup_distance=args.dedup_distance,
        progress=not args.quiet,
        label_map=parse_label_map(args.label_map),
    )
    result = evaluate_model(cfg)
    print(evaluation_report(result))
    run_dir = find_run_dir(args.model)
    if run_dir is not None and result.out_dir == RunDir(run_dir).eval_dir:
        # A run evaluated into its own folder gets its HTML report refreshed.
        from cxrscreen.evaluation.report import write_report

        print(f"report: {write_report(run_dir, log=lambda _msg: None)}")
    return 0
