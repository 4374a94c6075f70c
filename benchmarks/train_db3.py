"""Train the default recipe on the Radiography DB and report internal and external figures (issue 3 targets).

Usage (from the repo root; the full run takes a while on a 2-core CPU):

    .venv/bin/python benchmarks/train_db3.py                        # 3-class, binary and 4-class rows
    .venv/bin/python benchmarks/train_db3.py --tasks 3class --epochs 4 --img-size 160
    .venv/bin/python benchmarks/train_db3.py --out runs/bench       # finished runs in runs/bench/<task> are reused

Each task trains with ``cxrscreen.training.trainer.train`` on a leakage-free split and prints: wall time, epochs,
test accuracy and COVID sensitivity with 95% bootstrap CIs, and the COVID-vs-rest AUROC on the ieee8023
collection (not used for training; near-duplicates of training images left out, count shown).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TASKS = {
    "3class": ("covid,normal,viral", ["COVID-19_Radiography_Dataset"]),
    "binary": ("covid,other", ["COVID-19_Radiography_Dataset"]),
    "4class": ("covid,normal,viral,lung_infection",
               ["COVID-19_Radiography_Dataset", "chest_xray", "TB_Chest_Radiography_Database"]),
}


def fmt(interval: dict | None) -> str:
    if not interval or interval.get("value") is None:
        return "n/a"
    low, high = interval.get("ci_low"), interval.get("ci_high")
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{interval['value']:.3f}{ci}"


def run_task(task: str, args: argparse.Namespace) -> dict:
    from cxrscreen.evaluation.evaluate import EvaluationConfig, evaluate_model
    from cxrscreen.training.config import TrainConfig
    from cxrscreen.run_dir import RunDir
    from cxrscreen.training.trainer import train

    classes, folders = TASKS[task]
    run_dir = Path(args.out) / task
    seconds = None
    if not RunDir(run_dir).summary.exists():
        cfg = TrainConfig(
            data=[str(args.data_root / f) for f in folders], out=str(run_dir), classes=classes, img_size=args.img_size,
            epochs=args.epochs, batch_size=args.batch_size, limit_per_class=args.limit_per_class, seed=args.seed,
            lung_mode=args.lung_mode, equalize=args.equalize, num_threads=args.num_threads,
        )
        start = time.time()
        train(cfg, progress=not args.quiet)
        seconds = time.time() - start
        (run_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    elif (run_dir / "wall_seconds.txt").exists():
        seconds = float((run_dir / "wall_seconds.txt").read_text())
    summary = json.loads(RunDir(run_dir).summary.read_text())
    external = evaluate_model(EvaluationConfig(model=str(run_dir), data=[str(args.data_root / "covid-chestxray-dataset")],
                                               split="all", out=str(run_dir / "eval_ieee8023"), progress=False))
    ext = external.primary
    test = summary["test"]
    config = json.loads((run_dir / "config.json").read_text())
    return {
        "task": task,
        "recipe": f"{config['img_size']}px lungs={config['lung_mode']} eq={config['equalize']}",
        "minutes": None if seconds is None else seconds / 60,
        "epochs": summary["epochs_run"],
        "test_images": test["n_images"],
        "accuracy": test["accuracy"],
        "covid_sensitivity": test["per_class"].get("covid", {}).get("sensitivity"),
        "ieee_auroc": ext.covid_vs_rest.auroc.to_dict() if ext.covid_vs_rest else None,
        "ieee_images": ext.n_evaluated,
        "ieee_left_out": ext.left_out_near_duplicates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="3class,binary,4class")
    parser.add_argument("--data-root", type=Path, default=SHARED)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--lung-mode", default="none")
    parser.add_argument("--equalize", default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    rows = [run_task(task.strip(), args) for task in args.tasks.split(",") if task.strip()]
    header = f"{'task':8s} {'recipe':32s} {'minutes':>8s} {'epochs':>6s} {'test n':>6s}  {'test accuracy [95% CI]':26s} {'COVID sensitivity':26s} {'ieee8023 COVID-vs-rest AUROC':30s} {'ieee n (left out)':>17s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        minutes = "n/a" if r["minutes"] is None else f"{r['minutes']:.1f}"
        print(f"{r['task']:8s} {r['recipe']:32s} {minutes:>8s} {r['epochs']:>6d} {r['test_images']:>6d}  {fmt(r['accuracy']):26s} "
              f"{fmt(r['covid_sensitivity']):26s} {fmt(r['ieee_auroc']):30s} {r['ieee_images']:>8d} ({r['ieee_left_out']})")


if __name__ == "__main__":
    main()
