"""The numbers of the recipes benchmark (``benchmarks/generalisation.py``) for one trained run, all through
cxrscreen's evaluation API: one :class:`~cxrscreen.evaluation.evaluate.Evaluator` per run scores its internal
test split, ieee8023, Kermany's test normals and the left-out collections (near-duplicates of the run's training
images left out of every collection but its own split); the shortcut audit and the source probe come beside.

Every number is JSON-ready: an interval is ``{"value", "ci_low", "ci_high"}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxrscreen.data.cache import load_prepared
from cxrscreen.data.imageio import to_float
from cxrscreen.errors import ConfigError
from cxrscreen.evaluation.audit import AuditConfig, audit_model
from cxrscreen.evaluation.evaluate import EvaluationConfig, Evaluator
from cxrscreen.evaluation.probe import source_probe
from cxrscreen.evaluation.results import CollectionResult
from cxrscreen.lungs.finder import load_lung_finder
from cxrscreen.metrics.classification import Interval

from generalisation_data import COLLECTIONS, IEEE8023, kermany_normals_manifest

MEASURE_KEYS = ("internal", "ieee8023", "kermany_normals", "audit", "source_probe")


def evaluator_for(run: Path, args: argparse.Namespace) -> Evaluator:
    return Evaluator(EvaluationConfig(model=str(run), n_resamples=args.bootstrap, seed=args.seed, progress=False))


def complement(interval: Interval) -> dict[str, float | None]:
    """``1 - interval`` (e.g. the share called COVID from the specificity), bounds swapped."""
    return Interval(1 - interval.value, 1 - interval.high, 1 - interval.low).to_dict()


def called_covid(collection: CollectionResult) -> dict[str, Any]:
    """Share of a collection's non-COVID images the model calls COVID (its decision: the most probable class)."""
    negatives = collection.n_evaluated - int(collection.is_covid.sum())
    return {"called_covid": complement(collection.covid_vs_rest.specificity), "images": negatives,
            "near_duplicates_left_out": collection.left_out_near_duplicates}


def left_out_share(evaluator: Evaluator, key: str) -> dict[str, Any]:
    return called_covid(evaluator.evaluate_collection([str(COLLECTIONS[key])], "external"))


def measure_left_out(run: Path, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """The share of collection ``key`` (left out of the run's training) called COVID."""
    return left_out_share(evaluator_for(run, args), key)


def kermany_normals(evaluator: Evaluator, data_dir: Path) -> dict[str, Any]:
    """Kermany test NORMAL images (healthy children) called normal, or ``other`` by a binary model."""
    result = evaluator.evaluate_collection([str(kermany_normals_manifest(data_dir))], "external")
    called_as = "normal" if "normal" in result.classes else "other"
    return {"called_as": called_as, "share": result.multiclass.per_class[called_as]["sensitivity"].to_dict(),
            "images": result.n_evaluated, "near_duplicates_left_out": result.left_out_near_duplicates}


def collection_probe(evaluator: Evaluator, internal: CollectionResult, external: CollectionResult, seed: int) -> dict[str, Any] | None:
    """Source probe on the COVID images of the internal test split vs those of the external collection, as many of
    each (a seeded sample of the larger side), so that the majority rate is 50%."""
    inside = [p for p, t in zip(internal.paths, internal.targets) if t >= 0 and internal.classes[t] == "covid"]
    outside = [p for p, covid in zip(external.paths, external.is_covid) if covid]
    rng = np.random.default_rng(seed)
    n_each = min(len(inside), len(outside))
    paths = [str(p) for p in rng.permutation(inside)[:n_each]] + [str(p) for p in rng.permutation(outside)[:n_each]]
    prepared = load_prepared(paths, evaluator.meta.preprocessing, progress=False, lungs=load_lung_finder())
    features = evaluator.predictor.predict_prepared(to_float(prepared.images)).features
    sources = np.array(["internal"] * n_each + ["external"] * (len(paths) - n_each))[prepared.ok]
    try:
        return source_probe(features, sources).to_dict()
    except ConfigError:
        return None  # too few COVID images on one side (tiny runs)


def audit(run: Path, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The shortcut audit on at most ``--audit-images`` ieee8023 images: AUROC as they are, lungs hidden, lungs only."""
    result = audit_model(AuditConfig(model=str(run), data=[str(IEEE8023)], max_images=args.audit_images,
                                     n_resamples=args.bootstrap, seed=args.seed, out=str(run / "audit"), progress=False),
                         log=log)
    aurocs = {name: (s.covid_vs_rest.auroc.to_dict() if s.covid_vs_rest else None) for name, s in result.scores.items()}
    share = result.gradcam_lung_share.get("all")
    return {"images": result.n_images, "auroc": aurocs, "verdict": result.verdict,
            "gradcam_lung_share": None if share is None or not np.isfinite(share) else share,
            "lung_area_share": result.lung_area_share}


def measure_main(run: Path, left_out: list[str], args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Every number of the table for a recipe's main run (and the left-out shares of ``left_out``, for a run that
    trained on none of those collections)."""
    evaluator = evaluator_for(run, args)
    internal = evaluator.evaluate_collection(evaluator.train_data, "data")
    external = evaluator.evaluate_collection([str(IEEE8023)], "external")
    return {
        "internal": {
            "classes": internal.classes,
            "images": internal.n_evaluated,
            "accuracy": internal.multiclass.accuracy.to_dict(),
            "covid_sensitivity": internal.multiclass.per_class["covid"]["sensitivity"].to_dict(),
            "covid_vs_rest_auroc": internal.covid_vs_rest.auroc.to_dict(),
        },
        "ieee8023": {"auroc": external.covid_vs_rest.auroc.to_dict(),
                     "specificity": external.covid_vs_rest.specificity.to_dict(),
                     "images": external.n_evaluated, "near_duplicates_left_out": external.left_out_near_duplicates},
        "kermany_normals": kermany_normals(evaluator, args.out / "data"),
        "audit": audit(run, args, log),
        "source_probe": collection_probe(evaluator, internal, external, args.seed),
        "left_out": {key: left_out_share(evaluator, key) for key in left_out},
    }
