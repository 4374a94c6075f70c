"""``cxrscreen adapt``: check a model on a site's own labelled X-rays, fine-tune it there, and prove the gain.

:func:`adapt` runs, on the same images throughout (:mod:`cxrscreen.adaptation.site`):

1. **before**: the parent model's figures on every site image (its classes merged onto the site's);
2. **after**: k-fold cross-validation by patient and near-duplicate group (:mod:`~cxrscreen.adaptation.folds`):
   each fold fine-tunes the parent's tail (:mod:`~cxrscreen.adaptation.fine_tuning`) on the other folds, with early
   stopping on an inner split, and scores the held-out fold; the temperature and the positive class's operating
   threshold are fitted on these out-of-fold scores;
3. the **learning curve** (:mod:`~cxrscreen.adaptation.curve`);
4. the **final model**: fine-tuned on every site image for the median best epoch of the folds, saved as
   ``OUT/best.pt`` with its lineage, temperature, threshold, OOD guard and the hashes of every image it has seen.

``OUT`` also gets ``config.json``, ``adapt.json``, ``predictions.csv`` (before and out-of-fold after, per image)
and ``learning_curve.png``. Every file is written atomically: an interrupted run leaves no half-written model.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxrscreen import SCREENING_NOTICE
from cxrscreen.adaptation.config import AdaptConfig
from cxrscreen.adaptation.curve import curve_entry, plot_learning_curve
from cxrscreen.adaptation.folds import draw_per_class, fold_sizes, inner_split, make_folds
from cxrscreen.adaptation.head import merged_head
from cxrscreen.adaptation.scores import by_source, interval_fields, operating_threshold, site_scores
from cxrscreen.adaptation.site import SiteData, load_site, site_evaluator
from cxrscreen.adaptation.fine_tuning import TuneSettings, cut_index, fine_tune, frozen_features, predict_features
from cxrscreen.errors import ConfigError, RunDirError
from cxrscreen.guard.fit import fit_scored_guard
from cxrscreen.metrics.calibration import choose_temperature
from cxrscreen.metrics.classification import binary_metrics
from cxrscreen.metrics.reference import build_reference
from cxrscreen.inference.options import decide
from cxrscreen.inference.predictor import softmax
from cxrscreen.hashing import file_sha256
from cxrscreen.io_utils import atomic_write, write_json
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from cxrscreen.run_dir import RunDir
from cxrscreen.threads import configure_threads



class StepClock:
    """Wall seconds of each step of a run (``laps``: step -> seconds since the previous lap)."""

    def __init__(self) -> None:
        self.last = time.time()
        self.laps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        now = time.time()
        self.laps[step] = round(now - self.last, 1)
        self.last = now


@dataclass
class AdaptResult:
    """What :func:`adapt` measured (``report``: the content of adapt.json) and where it wrote."""

    run_dir: Path
    report: dict[str, Any]

    @property
    def checkpoint(self) -> Path:
        return RunDir(self.run_dir).best


def check_out_dir(cfg: AdaptConfig) -> None:
    """Refuse to replace an earlier adaptation or training run by accident."""
    files = RunDir(cfg.run_dir)
    taken = [path.name for path in (files.best, files.adapt) if path.exists()]
    if taken and not cfg.overwrite:
        raise RunDirError(f"{cfg.run_dir}: already holds {' and '.join(taken)}; use --overwrite or another --out")


def tune_settings(cfg: AdaptConfig) -> TuneSettings:
    return TuneSettings(cfg.epochs, cfg.patience, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.label_smoothing,
                        cfg.backbone_lr_factor)


class Adaptation:
    """One adaptation run; :func:`adapt` builds and runs it."""

    def __init__(self, cfg: AdaptConfig, log: Callable[[str], None]):
        self.cfg = cfg
        self.log = log
        self.settings = tune_settings(cfg)

    def run(self) -> AdaptResult:
        cfg, log = self.cfg, self.log
        start = time.time()
        self.clock = StepClock()
        check_out_dir(cfg)
        configure_threads(cfg.num_threads)
        evaluator = site_evaluator(cfg)
        self.parent_meta = evaluator.meta
        self.parent_path = Path(evaluator.predictor.model_path)
        site = load_site(cfg, evaluator, log)
        self.site = site
        self.clock.lap("site")
        counts = ", ".join(f"{c} {n}" for c, n in site.class_counts.items())
        log(f"site: {len(site.records)} images ({counts}); left out {site.left_out or 0} near-duplicate(s) of the "
            f"parent's training images")
        parent, _ = load_checkpoint(self.parent_path)
        self.parent = merged_head(parent, evaluator.merge)
        self.cut = cut_index(self.parent, cfg.train_blocks)
        log(f"computing the frozen layers' outputs once ({cfg.views} view(s) of each image)")
        self.features = frozen_features(self.parent, site.images, self.cut, cfg.views, cfg.augment, cfg.seed)
        self.clock.lap("frozen_features")
        self.positive_index = site.classes.index(cfg.positive)
        groups = [r.group_key for r in site.records]
        self.groups = groups
        before = site_scores(site.parent_probs, site.targets, site.classes, cfg.positive, groups, cfg.n_resamples, cfg.seed)

        folds = make_folds(site.groups, site.targets, len(site.classes), cfg.folds, cfg.seed)
        oof_logits, best_epochs = self.cross_validate(folds)
        calibration = choose_temperature(oof_logits, site.targets)
        oof_probs = softmax(oof_logits, calibration.temperature)
        score = oof_probs[:, self.positive_index]
        is_positive = site.targets == self.positive_index
        threshold = operating_threshold(score, is_positive, cfg.target_sensitivity)
        after = site_scores(oof_probs, site.targets, site.classes, cfg.positive, groups, cfg.n_resamples, cfg.seed)
        at_threshold = binary_metrics(is_positive, score, score >= threshold, cfg.positive, cfg.n_resamples, cfg.seed, groups)
        epochs = int(np.median(best_epochs))
        self.clock.lap("folds")
        curve = self.learning_curve(folds, epochs)
        self.clock.lap("learning_curve")

        report = {
            "notice": SCREENING_NOTICE,
            "parent": self.lineage_parent(),
            "data": list(cfg.data),
            "classes": list(site.classes),
            "positive_class": cfg.positive,
            "images": {
                "used": len(site.records), "per_class": site.class_counts, "listed": site.n_listed,
                "left_out_near_duplicates": site.left_out, "without_class": site.without_class,
                "unreadable": [{"path": p, "reason": r} for p, r in site.unreadable],
                "patients_known": site.patients_known, "notes": site.notes,
            },
            "ood_flagged": {"count": site.ood_flagged,
                            "share": None if site.ood_flagged is None else round(site.ood_flagged / len(site.records), 6)},
            "folds": {"k": cfg.folds, "grouped_by": "patient and near-duplicate group" if site.patients_known
                      else "near-duplicate group only (no patient column)",
                      "per_fold": fold_sizes(folds, site.targets, site.classes, cfg.folds), "best_epochs": best_epochs},
            "before": {**before, "ood_flagged": site.ood_flagged},
            "after": after,
            "temperature": calibration.to_dict(),
            "threshold": {"class": cfg.positive, "value": round(threshold, 6), "target_sensitivity": cfg.target_sensitivity,
                          **interval_fields("sensitivity", at_threshold.sensitivity),
                          **interval_fields("specificity", at_threshold.specificity),
                          "note": "set and measured on the same out-of-fold scores, so slightly optimistic"},
            "learning_curve": curve,
            "by_source": by_source([r.source for r in site.records], site.parent_probs, oof_probs, site.targets,
                                   site.classes, cfg.positive, groups, cfg.n_resamples, cfg.seed) if cfg.by_source else [],
            "final": {"epochs": epochs, "train_blocks": cfg.train_blocks, "images": len(site.records)},
            "settings": cfg.to_dict(),
        }
        self.write_predictions(oof_probs)
        if curve:
            report["figures"] = {"learning_curve": str(plot_learning_curve(curve, before, after, cfg.positive,
                                                                          RunDir(cfg.run_dir).learning_curve))}
        self.save_final(epochs, calibration.temperature, threshold, report, oof_probs)
        self.clock.lap("final_model")
        report["seconds"] = round(time.time() - start, 1)
        report["seconds_by_step"] = self.clock.laps
        write_json(RunDir(cfg.run_dir).adapt, report)
        return AdaptResult(cfg.run_dir, report)

    # -- the steps ----------------------------------------------------------------------------------------------
    def cross_validate(self, folds: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Out-of-fold logits (N, C) and each fold's best epoch."""
        cfg, site = self.cfg, self.site
        oof = np.zeros((len(site.records), len(site.classes)), dtype=np.float64)
        best_epochs = []
        for fold in range(cfg.folds):
            held_out = np.flatnonzero(folds == fold)
            train_idx, val_idx = inner_split(np.flatnonzero(folds != fold), site.groups, site.targets,
                                             len(site.classes), cfg.inner_fraction, cfg.seed + fold)
            tuned = fine_tune(self.parent, self.features, site.targets, train_idx, val_idx, self.cut, self.settings,
                              cfg.seed + fold)
            oof[held_out] = predict_features(tuned.model, self.features[0, held_out], self.cut)
            best_epochs.append(tuned.best_epoch)
            self.log(f"fold {fold + 1}/{cfg.folds}: fine-tuned on {len(train_idx)} (early stopping on {len(val_idx)}), "
                     f"best epoch {tuned.best_epoch}, scored {len(held_out)}")
        return oof, best_epochs

    def learning_curve(self, folds: np.ndarray, epochs: int) -> list[dict[str, Any]]:
        cfg, site = self.cfg, self.site
        is_positive = site.targets == self.positive_index
        curve = []
        for size in cfg.sizes:
            aurocs, drawn = [], []
            for repeat in range(cfg.repeats):
                oof = np.zeros((len(site.records), len(site.classes)), dtype=np.float64)
                for fold in range(cfg.folds):
                    rng = np.random.default_rng([cfg.seed, size, repeat, fold])
                    chosen = draw_per_class(np.flatnonzero(folds != fold), site.targets, size, rng)
                    drawn.append({c: int((site.targets[chosen] == i).sum()) for i, c in enumerate(site.classes)})
                    tuned = fine_tune(self.parent, self.features, site.targets, chosen, None, self.cut, self.settings,
                                      cfg.seed + repeat, epochs=epochs)
                    held_out = np.flatnonzero(folds == fold)
                    oof[held_out] = predict_features(tuned.model, self.features[0, held_out], self.cut)
                score = softmax(oof)[:, self.positive_index]
                aurocs.append(binary_metrics(is_positive, score, score >= 0.5, cfg.positive, cfg.n_resamples,
                                             cfg.seed, self.groups).auroc)
            curve.append(curve_entry(size, drawn, aurocs))
            self.log(f"learning curve: {size} per class -> AUROC {curve[-1]['auroc']}")
        return curve

    def lineage_parent(self) -> dict[str, Any]:
        meta = self.parent_meta
        return {"name": meta.name, "version": meta.version, "path": str(self.parent_path),
                "sha256": file_sha256(self.parent_path), "classes": list(meta.classes),
                "known_limits": list(meta.known_limits)}

    def save_final(self, epochs: int, temperature: float, threshold: float, report: dict[str, Any],
                   oof_probs: np.ndarray) -> None:
        """Fine-tune on every site image and write ``best.pt`` (with guard, lineage, temperature, threshold and the
        reference: the out-of-fold outputs on the site's images)."""
        cfg, site = self.cfg, self.site
        self.log(f"final model: fine-tuning on all {len(site.records)} images for {epochs} epoch(s)")
        tuned = fine_tune(self.parent, self.features, site.targets, np.arange(len(site.records)), None, self.cut,
                          self.settings, cfg.seed, epochs=epochs)
        self.log("fitting the OOD guard on the site's images")
        guard, guard_scores = fit_scored_guard(site.records, site.hashes, cfg.dedup_distance, thumbnails=site.thumbnails)
        meta = self.final_meta(temperature, threshold, guard, report)
        labels = np.array([decide(row, site.classes, meta.thresholds) for row in oof_probs])
        meta.reference = build_reference(oof_probs, labels, site.classes, guard_scores, guard["threshold"],
                                         meta.thresholds, cfg.positive,
                                         f"the site's {len(labels)} images, out of fold").to_dict()
        write_json(RunDir(cfg.run_dir).config, cfg.to_dict())
        save_checkpoint(RunDir(cfg.run_dir).best, tuned.model, meta)

    def final_meta(self, temperature: float, threshold: float, guard: dict, report: dict[str, Any]) -> ModelMeta:
        parent, cfg, site = self.parent_meta, self.cfg, self.site
        lineage = {key: report[key] for key in ("parent", "data", "images", "folds", "before", "after", "threshold",
                                                "learning_curve", "positive_class")}
        site_hashes = [site.hashes[r.path] for r in site.records if r.path in site.hashes]
        return ModelMeta(
            arch=parent.arch, classes=list(site.classes), preprocessing=parent.preprocessing,
            label_map={**parent.label_map, **cfg.label_map},
            name=cfg.name or f"{parent.name}-adapted", version=time.strftime("%Y%m%d"), temperature=temperature,
            train_summary=site.summary(list(cfg.data)),
            metrics={"adaptation": lineage},
            ood=guard,
            # Near-duplicates of every image this model has learned from, the parent's included, are left out later.
            train_hashes=list(dict.fromkeys([*parent.train_hashes, *site_hashes])),
            config={**cfg.to_dict(), "parent": report["parent"]["name"]},
            thresholds={cfg.positive: float(threshold)},
        )

    def write_predictions(self, oof_probs: np.ndarray) -> None:
        """Per image: path, source, class, fold-free parent probabilities and out-of-fold adapted ones."""
        site = self.site
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "source", "class", *[f"before_p_{c}" for c in site.classes],
                         *[f"after_p_{c}" for c in site.classes]])
        for i, record in enumerate(site.records):
            writer.writerow([record.path, record.source, site.classes[site.targets[i]],
                             *[f"{p:.17g}" for p in site.parent_probs[i]], *[f"{p:.17g}" for p in oof_probs[i]]])
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(RunDir(self.cfg.run_dir).adapt_predictions, "w") as fh:
            fh.write(buffer.getvalue())


def adapt(cfg: AdaptConfig | None = None, log: Callable[[str], None] = print, **kwargs: Any) -> AdaptResult:
    """Adapt a model to a site as ``cfg`` (or the keyword arguments of :class:`AdaptConfig`) says.

    Example (notebook): ``adapt(data=["site/"], classes="covid,other", out="runs/site").report["after"]``.
    """
    if cfg is None:
        cfg = AdaptConfig(**kwargs)
    elif kwargs:
        raise ConfigError("pass either an AdaptConfig or keyword arguments, not both")
    return Adaptation(cfg, log).run()
