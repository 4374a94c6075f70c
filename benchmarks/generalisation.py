"""Generalisation benchmark: does lung-focused preprocessing make a model read the lungs instead of the hospital?

    .venv/bin/python benchmarks/generalisation.py [--data DIR ...] [--external DIR] [--epochs 3] [--img-size 160]
        [--limit-per-class N] [--lung-mode crop_mask] [--equalize clahe] [--out runs/generalisation]
        [--plain-run DIR] [--lung-run DIR] [--audit-images 300] [--bootstrap 1000] [--json FILE]

Trains the default recipe twice on the same data, split, seed and epochs: as it is ("plain") and with the
lung-focused preprocessing (``--lung-mode``, ``--equalize``; "lung"). ``--plain-run`` / ``--lung-run`` reuse
finished run directories instead (and a run under ``--out`` that has finished is reused too). Then, for each
model, side by side:

- internal accuracy and COVID sensitivity (the run's own test split);
- COVID-vs-rest AUROC on ``--external`` (default: ieee8023 covid-chestxray-dataset) with near-duplicates of the
  training images left out (their number is printed);
- the same AUROC with the lung fields hidden and with only the lungs kept (the shortcut audit, on at most
  ``--audit-images`` of the external images), and the audit's verdict;
- the share of Grad-CAM mass inside the lung masks (against the share of the input the lungs cover);
- the source probe: cross-validated accuracy of a linear probe telling the collections apart (internal test split
  vs external) from the model's features, on COVID images only so that the disease cannot give the answer away,
  as many images of each (so the majority rate is 50%).

Needs the bundled lung segmenter (for the lung recipe and the audit). Full-size command for the lead:

    .venv/bin/python benchmarks/generalisation.py --epochs 3 --img-size 160 --out runs/generalisation
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cxrscreen.data.cache import load_prepared
from cxrscreen.evaluation.audit import AuditConfig, audit_model
from cxrscreen.evaluation.evaluate import EvaluationConfig, evaluate_model
from cxrscreen.evaluation.probe import source_probe
from cxrscreen.evaluation.tables import format_table
from cxrscreen.errors import ConfigError
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.io_utils import write_json
from cxrscreen.training.config import TrainConfig
from cxrscreen.run_dir import RunDir
from cxrscreen.training.trainer import train

SHARED = Path(os.environ.get("CXRSCREEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_DATA = [SHARED / "COVID-19_Radiography_Dataset"]
DEFAULT_EXTERNAL = SHARED / "covid-chestxray-dataset"
RECIPES = ("plain", "lung")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", type=Path, help="training collection(s) (default: the Radiography DB)")
    p.add_argument("--external", type=Path, default=DEFAULT_EXTERNAL, help="collection from other hospitals")
    p.add_argument("--classes", default="covid,normal,viral")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit-per-class", type=int, metavar="N", help="train on at most N images per class")
    p.add_argument("--lung-mode", default="crop_mask", help="lung recipe's --lung-mode")
    p.add_argument("--equalize", default="clahe", help="lung recipe's --equalize")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/generalisation"))
    p.add_argument("--plain-run", type=Path, help="reuse this finished run as the plain model")
    p.add_argument("--lung-run", type=Path, help="reuse this finished run as the lung-focused model")
    p.add_argument("--audit-images", type=int, default=300, help="external images for the shortcut audit")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--num-threads", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write the numbers here (default: OUT/generalisation.json)")
    return p.parse_args(argv)


def train_configs(args: argparse.Namespace) -> dict[str, TrainConfig]:
    plain = TrainConfig(data=[str(p) for p in (args.data or DEFAULT_DATA)], out=str(args.out / "plain"),
                        classes=args.classes, model=args.model, img_size=args.img_size, epochs=args.epochs,
                        batch_size=args.batch_size, seed=args.seed, limit_per_class=args.limit_per_class,
                        num_threads=args.num_threads, device=args.device, name="generalisation-plain")
    lung = dataclasses.replace(plain, out=str(args.out / "lung"), lung_mode=args.lung_mode, equalize=args.equalize,
                               name="generalisation-lung")
    return {"plain": plain, "lung": lung}


def ensure_run(cfg: TrainConfig, given: Path | None, split: Path | None) -> Path:
    """A finished run directory: ``given``, or ``cfg.out`` trained now unless it has finished already."""
    if given is not None:
        if not (given / "best.pt").is_file():
            raise ConfigError(f"{given}: not a finished run (no best.pt)")
        return given
    run = Path(cfg.out)
    if not RunDir(run).summary.is_file():
        print(f"training {run} ({cfg.lung_mode=}, {cfg.equalize=}) ...", file=sys.stderr)
        train(dataclasses.replace(cfg, split=str(split) if split else None), overwrite=True, progress=False,
              log=lambda line: print(line, file=sys.stderr))
    return run


def collection_probe(run: Path, internal, external, seed: int) -> dict[str, Any] | None:
    """Source probe on the COVID images of the internal test split vs those of the external collection, as many of
    each (a seeded sample of the larger side), so that the majority rate is 50%."""
    inside = [p for p, t in zip(internal.paths, internal.targets) if t >= 0 and internal.classes[t] == "covid"]
    outside = [p for p, covid in zip(external.paths, external.is_covid) if covid]
    rng = np.random.default_rng(seed)
    n_internal = min(len(inside), len(outside))
    paths = [str(p) for p in rng.permutation(inside)[:n_internal]] + [str(p) for p in rng.permutation(outside)[:n_internal]]
    predictor = load_predictor(run)
    prepared = load_prepared(paths, predictor.meta.preprocessing, progress=False)
    features = predictor.predict_prepared(prepared.images.astype(np.float32) / 255.0).features
    sources = np.array(["internal"] * n_internal + ["external"] * (len(paths) - n_internal))[prepared.ok]
    try:
        return source_probe(features, sources).to_dict()
    except ConfigError as exc:
        print(f"{run}: no source probe ({exc})", file=sys.stderr)
        return None


def measure(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every number of the table for one run."""
    evaluation = evaluate_model(EvaluationConfig(model=str(run), external=[str(args.external)], n_resamples=args.bootstrap,
                                                 seed=args.seed, out=str(run / "eval"), progress=False))
    internal, external = evaluation.collections
    audit = audit_model(AuditConfig(model=str(run), data=[str(args.external)], max_images=args.audit_images,
                                    n_resamples=args.bootstrap, seed=args.seed, out=str(run / "audit"), progress=False),
                        log=lambda line: print(line, file=sys.stderr))
    return {
        "run": str(run),
        "internal_accuracy": internal.multiclass.accuracy.to_dict(),
        "internal_covid_sensitivity": internal.multiclass.per_class["covid"]["sensitivity"].to_dict(),
        "external_images": external.n_evaluated,
        "external_near_duplicates_left_out": external.left_out_near_duplicates,
        "external_auroc": external.covid_vs_rest.auroc.to_dict(),
        "audit_images": audit.n_images,
        "audit_auroc": {name: (s.covid_vs_rest.auroc.to_dict() if s.covid_vs_rest else None) for name, s in audit.scores.items()},
        "gradcam_lung_share": audit.gradcam_lung_share.get("all"),
        "lung_area_share": audit.lung_area_share,
        "verdict": audit.verdict,
        "source_probe": collection_probe(run, internal, external, args.seed),
    }


def cell(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    bounds = f" [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]" if entry.get("ci_low") is not None else ""
    return f"{entry['value']:.3f}{bounds}"


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    plain, lung = results["plain"], results["lung"]

    def share(r: dict) -> str:
        value = r["gradcam_lung_share"]
        return "-" if value is None or not np.isfinite(value) else f"{value:.0%} (lungs cover {r['lung_area_share']:.0%})"

    def probe(r: dict) -> str:
        p = r["source_probe"]
        return "-" if p is None else f"{p['accuracy']:.1%} (majority {p['majority_rate']:.1%}, n={p['n_images']})"

    rows = [
        ["internal accuracy", cell(plain["internal_accuracy"]), cell(lung["internal_accuracy"])],
        ["internal COVID sensitivity", cell(plain["internal_covid_sensitivity"]), cell(lung["internal_covid_sensitivity"])],
        [f"external AUROC covid-vs-rest ({args.external.name})", cell(plain["external_auroc"]), cell(lung["external_auroc"])],
        ["  images (near-duplicates left out)", *(f"{r['external_images']} ({r['external_near_duplicates_left_out']})" for r in (plain, lung))],
        ["  audit sample: as they are", *(cell(r["audit_auroc"]["original"]) for r in (plain, lung))],
        ["  audit sample: lungs hidden", *(cell(r["audit_auroc"]["lungs_hidden"]) for r in (plain, lung))],
        ["  audit sample: only lungs kept", *(cell(r["audit_auroc"]["lungs_only"]) for r in (plain, lung))],
        ["Grad-CAM mass inside the lungs", share(plain), share(lung)],
        ["source probe, COVID images (internal vs external)", probe(plain), probe(lung)],
    ]
    header = ["", "plain", f"lung ({args.lung_mode}, {args.equalize})"]
    verdicts = "\n".join(f"verdict {name}: {results[name]['verdict']}" for name in RECIPES)
    return format_table(header, rows) + "\n" + verdicts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = train_configs(args)
    plain_run = ensure_run(configs["plain"], args.plain_run, None)
    # The lung recipe trains on the plain run's split, so both see the very same images.
    lung_run = ensure_run(configs["lung"], args.lung_run, RunDir(plain_run).split)
    results = {"plain": measure(plain_run, args), "lung": measure(lung_run, args)}
    print(table(results, args))
    write_json(args.json or args.out / "generalisation.json", {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
