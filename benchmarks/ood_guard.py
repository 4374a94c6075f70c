"""How often a trained model's out-of-distribution guard flags real frontal X-rays and non-X-rays (issue 6).

Usage (from the repo root):

    .venv/bin/python benchmarks/ood_guard.py                         # the bundled model
    .venv/bin/python benchmarks/ood_guard.py --model runs/db3 --per-set 200

Real frontal X-rays: the model's own held-out test split when ``--model`` is a run directory (else Radiography-DB
images), plus other collections (Kermany test, TB, ieee8023 frontal). Non-X-rays: scikit-image's sample photos,
noise, rendered text, and ieee8023 lateral views, in two halves by patient: the guard's layer was chosen on the
"design" half, so the "held-out" half is the fair figure. Targets: >= 99% of held-out frontal X-rays pass, >= 95%
of non-X-rays are flagged.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def first(paths: list[Path], n: int) -> list[Path]:
    return sorted(paths)[:n]


def real_sets(model: str | None, root: Path, n: int) -> dict[str, list[Path]]:
    from cxrscreen.guard.check import ieee_views

    split = Path(model) / "split.csv" if model and Path(model).is_dir() else None
    if split and split.is_file():
        with open(split, newline="", encoding="utf-8") as fh:
            own = [Path(r["path"]) for r in csv.DictReader(fh) if r["split"] == "test"]
    else:
        own = list((root / "COVID-19_Radiography_Dataset").glob("*/images/*.jpg"))[::7]
    return {
        "own test split" if split else "Radiography DB": own[:n] if len(own) <= n else own[:: max(1, len(own) // n)][:n],
        "Kermany test": first(list((root / "chest_xray" / "test").glob("*/*.jpg")), n),
        "TB database": first(list((root / "TB_Chest_Radiography_Database").glob("*/*.jpg")), n),
        "ieee8023 frontal": first(ieee_views(root / "covid-chestxray-dataset", ("PA", "AP", "AP Supine")), n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run directory or checkpoint (default: the bundled model)")
    parser.add_argument("--data-root", type=Path, default=SHARED)
    parser.add_argument("--per-set", type=int, default=150, help="real X-rays per set")
    args = parser.parse_args()

    from scipy.stats import binomtest

    from cxrscreen.guard.check import flagged_rate, lateral_halves, non_xray_samples
    from cxrscreen.inference.predictor import load_predictor

    predictor = load_predictor(args.model)
    rows = [("real", name, len(paths), flagged_rate(predictor, paths)) for name, paths in real_sets(args.model, args.data_root, args.per_set).items()]
    laterals = lateral_halves(args.data_root / "covid-chestxray-dataset")
    others = {**non_xray_samples(), **{f"lateral, {half}": paths for half, paths in laterals.items()}}
    rows += [("not frontal X-ray", name, len(items), flagged_rate(predictor, items)) for name, items in others.items()]
    print(f"model: {predictor.meta.name} ({predictor.meta.arch}, {predictor.meta.preprocessing.img_size} px)")
    print(f"{'kind':18s} {'set':18s} {'images':>6s} {'flagged':>8s} {'passed':>8s} {'passed, 95% CI':>15s}")
    for kind, name, n, rate in rows:
        passed = n - round(n * rate)
        low, high = binomtest(passed, n).proportion_ci(0.95)
        print(f"{kind:18s} {name:18s} {n:6d} {n - passed:8d} {passed:8d} {low:7.1%}-{high:.1%}")
    non = [(n, r) for kind, _, n, r in rows if kind != "real"]
    print(f"non-X-rays flagged overall: {sum(n * r for n, r in non) / sum(n for n, _ in non):.1%}")
    lateral = [(n, r) for _, name, n, r in rows if name.startswith("lateral")]
    print(f"lateral views flagged (both halves): {sum(n * r for n, r in lateral) / sum(n for n, _ in lateral):.1%}")


if __name__ == "__main__":
    main()
