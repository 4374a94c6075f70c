"""Drift monitoring of the bundled default model: false alarms on its own test split, detection delay when the
images change, and what the audit log and the metrics cost per image.

    .venv/bin/python benchmarks/monitor.py [--orders 200] [--window 200] [--data ../shared/data]

Scenarios (each over ``--orders`` random orders of the same predictions):
- ``internal``: 600 images of the model's own test split (made again from its stored config and checked against
  its training images, :func:`cxrscreen.training.run_data.recreate_split`): any alarm is a false alarm;
- ``internal -> TB``: 300 of them, then 300 images of the TB Chest Radiography Database (adult tuberculosis; its
  normals are not in ../shared/data);
- ``internal -> Kermany``: 300 of them, then 300 of Kermany's pediatric test split (normal and pneumonia).
The detection delay is the number of new images screened when the first alarm is raised. ``--write-list`` also
writes the 600 internal images' paths (relative to the data root) for tests/monitoring/test_drift_targets.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from cxrscreen.inference.predictor import load_predictor
from cxrscreen.monitoring.audit import AuditLog, ModelIdentity
from cxrscreen.monitoring.drift import Observation, first_alarm, monitor
from cxrscreen.monitoring.events import ScreeningEvent
from cxrscreen.monitoring.metrics import ScreeningMetrics
from cxrscreen.monitoring.observers import stored_reference
from cxrscreen.monitoring.report import monitor_log
from cxrscreen.monitoring.settings import DriftSettings
from cxrscreen.training.run_data import recreate_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INTERNAL, BEFORE, AFTER = 600, 300, 300


def observations(predictor, paths: list[Path]) -> tuple[list, list[Observation]]:
    results = predictor.predict_batch([str(p) for p in paths])
    failed = [r for r in results if not hasattr(r, "probabilities")]
    if failed:
        sys.exit(f"monitor benchmark: {failed[0]}")
    return results, [Observation(tuple(r.probabilities[c] for c in predictor.classes), r.ood_score,
                                 None if r.ood_score is None else not r.in_distribution) for r in results]


def shifted_runs(reference, internal, foreign, orders: int, settings: DriftSettings, seed: int):
    """(delay or None, moved quantities at the first alarm, whether an alarm came before the change) per order."""
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(orders):
        before = [internal[i] for i in rng.choice(len(internal), BEFORE, replace=False)]
        after = [foreign[i] for i in rng.permutation(len(foreign))[:AFTER]]
        alarm = first_alarm(monitor(reference, before + after, settings))
        if alarm is None:
            runs.append((None, [], False))
        else:
            runs.append((alarm.last - BEFORE, [q.name for q in alarm.moved], alarm.last <= BEFORE))
    return runs


def cost_per_line(predictor, results, identity: ModelIdentity) -> tuple[float, float]:
    """Milliseconds per event of the audit log (with its fsync) and of the metrics observer."""
    events = [ScreeningEvent("predict", f"sha256:{i:064x}", 0.05, r) for i, r in enumerate(results)]
    with tempfile.TemporaryDirectory() as tmp, AuditLog(Path(tmp) / "audit.jsonl", identity) as audit:
        start = time.perf_counter()
        for event in events:
            audit(event)
        audit_ms = (time.perf_counter() - start) * 1000 / len(events)
    metrics = ScreeningMetrics(identity)
    start = time.perf_counter()
    for event in events:
        metrics(event)
    return audit_ms, (time.perf_counter() - start) * 1000 / len(events)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=200, help="random orders per scenario")
    p.add_argument("--window", type=int, default=DriftSettings().window)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-list", type=Path, metavar="TXT", help="write the internal images' paths here")
    p.add_argument("--example-log", type=Path, metavar="JSONL",
                   help="also write the audit log of one order of 'internal -> Kermany' (for `cxrscreen monitor`)")
    args = p.parse_args(argv)
    settings = DriftSettings(window=args.window)
    predictor = load_predictor("default")
    reference = stored_reference(predictor.meta, predictor.model_path)
    rng = np.random.default_rng(args.seed)
    test_paths = sorted(recreate_split(predictor.meta, log=lambda _: None).part("test").paths)
    internal_paths = [Path(test_paths[i]) for i in sorted(rng.choice(len(test_paths), INTERNAL, replace=False))]
    if args.write_list:
        root = args.data.resolve()
        args.write_list.write_text("".join(f"{p.resolve().relative_to(root)}\n" for p in internal_paths))
    tb = sorted((args.data / "TB_Chest_Radiography_Database").rglob("*.jpg"))
    kermany = sorted((args.data / "chest_xray" / "test").rglob("*.jpg"))
    start = time.perf_counter()
    results, internal = observations(predictor, internal_paths)
    _, tb_obs = observations(predictor, [tb[i] for i in rng.choice(len(tb), AFTER, replace=False)])
    kermany_results, kermany_obs = observations(predictor, [kermany[i] for i in rng.choice(len(kermany), AFTER,
                                                                                          replace=False)])
    predict_s = time.perf_counter() - start
    if args.example_log:
        with AuditLog(args.example_log, ModelIdentity.of(predictor)) as audit:
            before = [results[i] for i in np.random.default_rng(args.seed).permutation(INTERNAL)[:BEFORE]]
            for i, result in enumerate([*before, *kermany_results]):
                audit(ScreeningEvent("predict", f"example:{i}", 0.05, result))

    false_alarms = 0
    for _ in range(args.orders):
        order = [internal[i] for i in rng.permutation(INTERNAL)]
        false_alarms += first_alarm(monitor(reference, order, settings)) is not None
    rows = [("internal (600)", args.orders, f"{false_alarms} ({100 * false_alarms / args.orders:.1f}%)", "-", "-", "-")]
    for name, foreign in (("internal -> TB", tb_obs), ("internal -> Kermany", kermany_obs)):
        runs = shifted_runs(reference, internal, foreign, args.orders, settings, args.seed + len(rows))
        early = sum(before for _, _, before in runs)
        delays = [d for d, _, before in runs if d is not None and not before]
        within = sum(d <= 100 for d in delays)
        moved = Counter(q for d, names, before in runs if not before for q in names).most_common()
        delay_text = (f"median {statistics.median(delays):.0f}, 90% {np.percentile(delays, 90):.0f}, max {max(delays)}"
                      if delays else "never")
        rows.append((name, args.orders, f"{early} before the change", delay_text,
                     f"{within}/{args.orders}", ", ".join(f"{q} {n}" for q, n in moved)))

    identity = ModelIdentity.of(predictor)
    audit_ms, metrics_ms = cost_per_line(predictor, results, identity)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.jsonl"
        with AuditLog(log, identity) as audit:
            for result in results:
                audit(ScreeningEvent("predict", "sha256:0", 0.05, result))
        start = time.perf_counter()
        report = monitor_log(log, None, settings)
        monitor_s = time.perf_counter() - start

    print(f"model {predictor.meta.name}: reference {reference.source}; window {settings.window}, a look every "
          f"{settings.step}, alpha {settings.alpha} per {settings.horizon} images")
    header = ("scenario", "orders", "alarms (false / early)", "detection delay (images)", "within 100", "what moved")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(f"{str(cell):<{w}}" for cell, w in zip(row, widths)))
    print(f"predicting {INTERNAL + 2 * AFTER} images: {predict_s:.1f} s; audit log {audit_ms:.3f} ms per line "
          f"(fsync'd); metrics {metrics_ms:.3f} ms per image; `monitor` on a {len(results)}-line log "
          f"{monitor_s:.2f} s ({len(report.looks)} looks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
