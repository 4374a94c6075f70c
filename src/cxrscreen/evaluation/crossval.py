"""Leave-one-source-out: train on every source but one, test on the one left out, for each source.

A model that learned the disease should keep its score on a hospital it never saw; one that learned the hospital
should not. Each fold is an ordinary training run (:func:`cxrscreen.training.trainer.train`) on a CSV manifest of
the other sources' images, evaluated (:func:`cxrscreen.evaluation.evaluate.evaluate_model`) on a manifest of the
left-out source, after leaving out near-duplicates of the fold's training images. Only a left-out source that
holds both COVID and non-COVID images gives a COVID-vs-rest AUROC; the table says so where it does not.

Layout under ``out``: ``<source>/train.csv``, ``<source>/test.csv``, ``<source>/run/`` (the run directory),
``<source>/run/eval/`` (metrics.json), and ``crossval.json`` for all folds. A fold whose run has finished is
reused, so an interrupted cross-validation picks up where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cxrscreen import SCREENING_NOTICE
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.records import Record
from cxrscreen.data.sources import load_dataset
from cxrscreen.errors import ConfigError, CxrError
from cxrscreen.evaluation.evaluate import EvaluationConfig, evaluate_model
from cxrscreen.evaluation.tables import format_interval, format_table
from cxrscreen.io_utils import atomic_write, write_json
from cxrscreen.metrics.classification import BinaryMetrics, Interval
from cxrscreen.run_dir import RunDir
from cxrscreen.training.config import TrainConfig
from cxrscreen.training.run_data import limit_per_class
from cxrscreen.training.trainer import train

LEAVE_OUT_LEVELS = ("source", "collection")


@dataclass
class FoldResult:
    """One fold: the source left out, the images on each side and the scores on the left-out source.

    ``covid_vs_rest`` is None when the model has no covid class; its AUROC is NaN when the left-out source
    lacks COVID or non-COVID images (``note`` says so). ``error`` is set when the fold could not be trained or
    evaluated (e.g. a class missing from the other sources).
    """

    source: str
    n_train: int
    n_test: int
    test_findings: dict[str, int]
    run_dir: Path
    left_out_near_duplicates: int | None = None
    covid_vs_rest: BinaryMetrics | None = None
    accuracy: Interval | None = None
    macro_f1: Interval | None = None
    note: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "train_images": self.n_train,
            "test_images": self.n_test,
            "test_findings": dict(self.test_findings),
            "run_dir": str(self.run_dir),
            "left_out_near_duplicates": self.left_out_near_duplicates,
            "covid_vs_rest": None if self.covid_vs_rest is None else self.covid_vs_rest.to_dict(),
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "macro_f1": None if self.macro_f1 is None else self.macro_f1.to_dict(),
            "note": self.note,
            "error": self.error,
        }


@dataclass
class CrossvalResult:
    """All folds of a leave-one-source-out cross-validation."""

    level: str
    classes: list[str]
    folds: list[FoldResult]
    out_dir: Path
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "notice": SCREENING_NOTICE,
            "leave_out": self.level,
            "classes": list(self.classes),
            "folds": [fold.to_dict() for fold in self.folds],
            "train_config": dict(self.config),
        }


def source_key(record: Record, level: str) -> str:
    """The source a record belongs to: its full ``source`` (e.g. ``ieee8023/Italy``) or its collection (``ieee8023``)."""
    return record.source if level == "source" else record.source.split("/")[0]


def fold_name(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._") or "source"


def write_manifest(records: list[Record], label_set: LabelSet, path: Path) -> Path:
    """A CSV manifest (``path,label,patient_id,source``) of ``records``; the label is the canonical finding, or
    the raw label where the task maps it itself (``--label-map``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "patient_id", "source"])
    for r in records:
        label = r.raw_label if r.raw_label.strip().lower() in label_set.extra else r.label
        writer.writerow([r.path, label, r.patient_id or "", r.source])
    with atomic_write(path, "w") as fh:
        fh.write(buffer.getvalue())
    return path


def fold_scores(fold: FoldResult, evaluation) -> None:
    """Copy the left-out source's scores from an :class:`EvaluationResult` into ``fold``."""
    collection = evaluation.primary
    fold.left_out_near_duplicates = collection.left_out_near_duplicates
    fold.n_test = collection.n_evaluated
    fold.covid_vs_rest = collection.covid_vs_rest
    if collection.multiclass is not None:
        fold.accuracy, fold.macro_f1 = collection.multiclass.accuracy, collection.multiclass.macro_f1
    covid = collection.covid_vs_rest
    if covid is not None and not 0 < covid.n_positive < covid.n_images:
        fold.note = ("no AUROC: the source holds no COVID image" if covid.n_positive == 0
                     else "no AUROC: the source holds only COVID images")


def leave_one_source_out(
    cfg: TrainConfig,
    out: str | Path,
    level: str = "source",
    n_resamples: int = 1000,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CrossvalResult:
    """Run one fold per source of ``cfg.data`` (``level``: ``source`` or ``collection``) with ``cfg``'s recipe.

    ``cfg.limit_per_class`` is applied once to the whole data (seeded) before the folds are formed; ``cfg.out``
    and ``cfg.split`` are replaced per fold. Sources with no image of a class are still folds: their training side
    must hold every class, else the fold reports the trainer's error.
    """
    if level not in LEAVE_OUT_LEVELS:
        raise ConfigError(f"--leave-out must be one of {', '.join(LEAVE_OUT_LEVELS)}, got {level!r}")
    label_set = LabelSet.parse(cfg.classes, cfg.label_map)
    dataset = limit_per_class(load_dataset(cfg.data, label_set, frontal_only=cfg.frontal_only), cfg.limit_per_class, cfg.seed)
    by_source: dict[str, list[Record]] = {}
    for record in dataset.records:
        by_source.setdefault(source_key(record, level), []).append(record)
    if len(by_source) < 2:
        raise ConfigError(f"--leave-out {level}: the data holds one {level} only ({', '.join(by_source)}); "
                          "pass collections from at least two sources with --data")
    out_dir = Path(out)
    folds = []
    for source in sorted(by_source):
        folder = out_dir / fold_name(source)
        train_records = [r for s, recs in by_source.items() if s != source for r in recs]
        test_records = by_source[source]
        fold = FoldResult(source, len(train_records), len(test_records), dict(Counter(r.label for r in test_records)),
                          folder / "run")
        log(f"fold {source}: train on {len(train_records)} image(s) of the other {level}s, test on {len(test_records)}")
        train_csv = write_manifest(train_records, label_set, folder / "train.csv")
        test_csv = write_manifest(test_records, label_set, folder / "test.csv")
        fold_cfg = dataclasses.replace(cfg, data=[str(train_csv)], out=str(fold.run_dir), split=None, limit_per_class=None)
        try:
            if not RunDir(fold.run_dir).summary.is_file():
                train(fold_cfg, overwrite=True, progress=progress, log=log)
            evaluation = evaluate_model(EvaluationConfig(
                data=[str(test_csv)], model=str(fold.run_dir), split="all", n_resamples=n_resamples, seed=cfg.seed,
                dedup_distance=cfg.dedup_distance, out=str(RunDir(fold.run_dir).eval_dir), progress=progress,
                backend="torch"))  # one small held-out fold per model: an ONNX export would cost more than it saves
            fold_scores(fold, evaluation)
        except CxrError as exc:
            fold.error = str(exc)
            log(f"fold {source}: {exc}")
        folds.append(fold)
    result = CrossvalResult(level, list(label_set.classes), folds, out_dir, cfg.to_dict())
    write_json(RunDir(out_dir).crossval, result.to_dict())
    return result


def crossval_report(result: CrossvalResult) -> str:
    """One table: per left-out source, the images on each side and the scores on the left-out source."""
    rows = []
    for f in result.folds:
        b = f.covid_vs_rest
        has_auroc = b is not None and 0 < b.n_positive < b.n_images
        rows.append([
            f.source, str(f.n_train), str(f.n_test), "-" if b is None else str(b.n_positive),
            format_interval(b.auroc) if has_auroc else "-",
            "-" if b is None or b.n_positive == 0 else format_interval(b.sensitivity),
            "-" if b is None or b.n_positive == b.n_images else format_interval(b.specificity),
            format_interval(f.accuracy), format_interval(f.macro_f1),
            f.error or f.note or (f"left out {f.left_out_near_duplicates} near-dup." if f.left_out_near_duplicates else ""),
        ])
    headers = [f"{result.level} left out", "train n", "test n", "covid", "AUROC covid-vs-rest", "sensitivity",
               "specificity", "accuracy", "macro-F1", "note"]
    return (f"leave-one-{result.level}-out, classes {', '.join(result.classes)} (scores on the left-out {result.level}, "
            f"95% bootstrap CIs)\n" + format_table(headers, rows) + f"\n\nwrote {RunDir(result.out_dir).crossval}")
