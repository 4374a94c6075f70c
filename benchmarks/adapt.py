"""Site-adaptation benchmark: the bundled model adapted to two "new hospitals" with ``cxrscreen adapt``.

    .venv/bin/python benchmarks/adapt.py [--out runs/bench_adapt] [--quick] [--kermany-per-class 150]
        [--sizes 10,25,50,100] [--repeats 3] [--bootstrap 1000] [--skip ieee8023|kermany] [--model NAME] [--json FILE]

1. **ieee8023** (covid-chestxray-dataset, many hospitals): frontal views, near-duplicates of the bundled model's
   training images left out, classes ``covid,other`` (the parent's normal and viral rows merged into ``other``),
   5 folds by patient. COVID-vs-rest AUROC before and after (out of fold) with 95% CIs, the learning curve, and the
   wall time. Targets: after >= 0.80, >= 0.75 with 50 labelled images per class, <= 10 minutes.
2. **Kermany** (children): adapted on ``--kermany-per-class`` images per class of Kermany *train* (a seeded subset,
   near-duplicates of the parent's training images left out; ``--label-map bacterial=viral``, positive class
   ``viral``), then the adapted model (its threshold included) scores Kermany *test*. Targets: NORMAL called normal
   >= 90% while PNEUMONIA is still called viral >= 90%; the parent's rates are printed beside.

``--quick`` runs a reduced version for development on a shared machine (sizes 10,50, one repeat, 200 resamples,
80 Kermany images per class).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrscreen.adaptation import AdaptConfig, adapt
from cxrscreen.adaptation.config import parse_sizes
from cxrscreen.adaptation.tables import adapt_report, format_figure
from cxrscreen.data.cache import load_prepared
from cxrscreen.data.imageio import to_float
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import load_dataset
from cxrscreen.evaluation.tables import format_table
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.io_utils import write_json
from cxrscreen.lungs.finder import load_lung_finder

SHARED = Path(os.environ.get("CXRSCREEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IEEE = SHARED / "covid-chestxray-dataset"
KERMANY = SHARED / "chest_xray"
MAX_SECONDS = 600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_adapt"))
    p.add_argument("--quick", action="store_true", help="reduced sizes for development")
    p.add_argument("--sizes", default="10,25,50,100")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--kermany-per-class", type=int, default=150, help="Kermany train images per class (normal, pneumonia)")
    p.add_argument("--skip", choices=["ieee8023", "kermany"], action="append", default=[])
    p.add_argument("--model", default=None, help="parent model of the ieee8023 adaptation (a path or a bundled name, "
                   "e.g. adult-binary; default: the bundled default). Kermany always adapts the default, whose "
                   "viral class its pneumonias map onto")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.bootstrap, args.kermany_per_class = "10,50", 1, 200, 80
    return args


def run_ieee(args: argparse.Namespace) -> dict[str, Any]:
    start = time.time()
    result = adapt(AdaptConfig(data=[str(IEEE)], model=args.model, classes="covid,other", out=str(args.out / "ieee8023"), folds=5,
                               sizes=parse_sizes(args.sizes), repeats=args.repeats, n_resamples=args.bootstrap,
                               by_source=True, overwrite=True, progress=False), log=print)
    seconds = time.time() - start
    report = result.report
    print(adapt_report(report))
    at_50 = next((row for row in report["learning_curve"] if row["size"] == 50), None)
    steps = report["seconds_by_step"]
    # The target's "5 folds + final model": everything but the learning curve (its own question, its own cost).
    adaptation_seconds = seconds - steps.get("learning_curve", 0.0)
    print(f"\nwall time: {seconds:.0f} s in all; by step: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items()))
    checks = [
        ("COVID-vs-rest AUROC after >= 0.80", report["after"]["auroc"], report["after"]["auroc"] >= 0.80),
        ("AUROC with 50 per class >= 0.75", None if at_50 is None else at_50["auroc"],
         at_50 is not None and at_50["auroc"] is not None and at_50["auroc"] >= 0.75),
        (f"wall time, 5 folds + final model <= {MAX_SECONDS} s", round(adaptation_seconds), adaptation_seconds <= MAX_SECONDS),
    ]
    print_checks("ieee8023", checks)
    return {"before": report["before"], "after": report["after"], "threshold": report["threshold"],
            "learning_curve": report["learning_curve"], "images": report["images"]["used"],
            "left_out_near_duplicates": report["images"]["left_out_near_duplicates"], "seconds": round(seconds, 1),
            "seconds_without_learning_curve": round(adaptation_seconds, 1), "seconds_by_step": steps,
            "checks": {name: ok for name, _, ok in checks}}


def kermany_manifest(split: str, per_class: int | None, path: Path, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """A manifest of Kermany ``split`` images (``per_class`` normal and pneumonia images, seeded; None = all)."""
    dataset = load_dataset(KERMANY, LabelSet.parse("normal,pneumonia"))
    rng = np.random.default_rng(seed)
    rows: list[Any] = []
    counts = {}
    for name in ("normal", "pneumonia"):
        records = [r for r in dataset.records if r.extra.get("split") == split and
                   LabelSet.parse("normal,pneumonia").class_of(r.label) == name]
        chosen = records if per_class is None else [records[i] for i in sorted(rng.permutation(len(records))[:per_class])]
        counts[name] = len(chosen)
        rows += [(r.path, r.raw_label, r.patient_id or "", "kermany") for r in chosen]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "source"])
        writer.writerows(rows)
    return path, counts


def called_rates(model: str | None, manifest: Path) -> dict[str, Any]:
    """Share of Kermany test NORMAL images called normal and PNEUMONIA images called viral (the model's decision
    rule, thresholds included), and how many the OOD guard flags."""
    predictor = load_predictor(model)
    dataset = load_dataset(manifest, LabelSet.parse("normal,pneumonia"))
    prepared = load_prepared(dataset.paths, predictor.meta.preprocessing, progress=False, lungs=load_lung_finder())
    outputs = predictor.predict_prepared(to_float(prepared.images[:]))
    called = np.array([predictor.decide(row) for row in outputs.probs])
    targets = dataset.targets[prepared.ok]
    normal, pneumonia = targets == 0, targets == 1
    return {"normal_called_normal": float((called[normal] == "normal").mean()),
            "pneumonia_called_viral": float((called[pneumonia] == "viral").mean()),
            "n_normal": int(normal.sum()), "n_pneumonia": int(pneumonia.sum())}


def run_kermany(args: argparse.Namespace) -> dict[str, Any]:
    start = time.time()
    train_csv, train_counts = kermany_manifest("train", args.kermany_per_class, args.out / "kermany" / "train.csv")
    test_csv, _ = kermany_manifest("test", None, args.out / "kermany" / "test.csv")
    result = adapt(AdaptConfig(data=[str(train_csv)], label_map={"bacterial": "viral"}, positive="viral",
                               out=str(args.out / "kermany" / "run"), folds=5, sizes=(), n_resamples=args.bootstrap,
                               overwrite=True, progress=False), log=print)
    print(adapt_report(result.report))
    before, after = called_rates(None, test_csv), called_rates(str(result.checkpoint), test_csv)
    seconds = time.time() - start
    rows = [[name, f"{before[key]:.1%}", f"{after[key]:.1%}"] for name, key in
            (("NORMAL called normal", "normal_called_normal"), ("PNEUMONIA called viral", "pneumonia_called_viral"))]
    print(f"\nKermany test ({after['n_normal']} NORMAL, {after['n_pneumonia']} PNEUMONIA); adapted on "
          f"{result.report['images']['used']} of {sum(train_counts.values())} train images drawn "
          f"({result.report['images']['left_out_near_duplicates']} near-duplicates of the parent's training images left out)")
    print(format_table(["Kermany test", "parent", "adapted"], rows))
    checks = [("NORMAL called normal >= 90%", round(after["normal_called_normal"], 3), after["normal_called_normal"] >= 0.90),
              ("PNEUMONIA called viral >= 90%", round(after["pneumonia_called_viral"], 3), after["pneumonia_called_viral"] >= 0.90)]
    print_checks("kermany", checks)
    return {"train_drawn": train_counts, "train_used": result.report["images"]["used"], "before": before, "after": after,
            "cv_after": {k: result.report["after"][k] for k in ("auroc", "auroc_ci")},
            "cv_auroc_viral": format_figure(result.report["after"], "auroc"), "seconds": round(seconds, 1),
            "checks": {name: ok for name, _, ok in checks}}


def print_checks(name: str, checks: list[tuple[str, Any, bool]]) -> None:
    print(f"\n{name} targets:")
    print(format_table(["target", "measured", "met"], [[label, str(value), "yes" if ok else "NO"] for label, value, ok in checks]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures: dict[str, Any] = {"quick": args.quick}
    if "ieee8023" not in args.skip:
        figures["ieee8023"] = run_ieee(args)
    if "kermany" not in args.skip:
        figures["kermany"] = run_kermany(args)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
