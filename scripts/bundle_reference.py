"""Store a drift reference in a bundled model made before checkpoints carried one (run once per model; `train`
and `adapt` store it themselves).

    .venv/bin/python scripts/bundle_reference.py [NAME ...]     # default: every bundled model without one

The model's split is made again from the config it stores and checked against its training images' pHashes
(:func:`cxrscreen.training.run_data.recreate_split`). The reference (:mod:`cxrscreen.metrics.reference`) is what
the model does on its validation images: their probabilities and labels through the predictor users get
(thresholds included), and their guard scores out of fold, the guard's calibration made again on its training and
validation images, so that the scores are those of a guard that never saw the image (the threshold this gives is
printed beside the stored one as a check). Only ``meta["reference"]`` changes: the file is rewritten with the same
weights, checked tensor by tensor before it replaces the old one.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
import torch

from cxrscreen.data.splits import record_groups
from cxrscreen.guard.fit import GUARD_SIDES
from cxrscreen.guard.inputs import GUARD_ACCEPT_RATE, GUARD_NETWORK, guard_thumbnails
from cxrscreen.guard.network import torch_guard_features
from cxrscreen.guard.ppca import fit_scored_ood_guard
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.io_utils import atomic_write
from cxrscreen.metrics.reference import build_reference
from cxrscreen.models.bundled import bundled_model, bundled_models
from cxrscreen.models.checkpoint import read_checkpoint
from cxrscreen.models.meta import ModelMeta
from cxrscreen.training.run_data import recreate_split


def out_of_fold_guard_scores(meta: ModelMeta, split, val_paths: list[str]) -> np.ndarray:
    """The guard scores of ``val_paths`` from the guard's own out-of-fold calibration on the train + val images."""
    records = [r for side in GUARD_SIDES for r in split.part(side).records]
    thumbnails, ok = guard_thumbnails([r.path for r in records], progress=True, on_bad_image="skip")
    groups = record_groups(records, split.hashes, float(meta.config.get("dedup_distance", 6)))
    guard, scores = fit_scored_ood_guard(torch_guard_features(thumbnails), groups[ok], accept_rate=GUARD_ACCEPT_RATE,
                                         features="whole_image", network=GUARD_NETWORK)
    print(f"  guard threshold made again {guard['threshold']:.3f}, stored {meta.ood['threshold']:.3f}")
    by_path = {records[i].path: score for i, score in zip(ok, scores)}
    return np.array([by_path.get(path, np.nan) for path in val_paths])


def add_reference(name: str) -> None:
    path = bundled_model(name).path
    payload = read_checkpoint(path)
    meta = ModelMeta.from_dict(payload["meta"])
    split = recreate_split(meta)
    val_paths = split.part("val").paths
    print(f"{name}: split made again and checked; {len(val_paths)} validation images")
    predictor = load_predictor(path)
    results = predictor.predict_batch(val_paths)
    failures = [r for r in results if not hasattr(r, "probabilities")]
    if failures:
        sys.exit(f"bundle_reference: {len(failures)} validation images could not be read, e.g. {failures[0]}")
    probs = np.array([[r.probabilities[c] for c in predictor.classes] for r in results])
    labels = np.array([predictor.classes.index(predictor.decide(row)) for row in probs])
    scores = out_of_fold_guard_scores(meta, split, val_paths) if meta.ood else None
    reference = build_reference(probs, labels, predictor.classes, scores, meta.ood.get("threshold"),
                                predictor.thresholds,
                                source=f"validation split made again from the stored config, {len(val_paths)} images")
    print(f"  labels {reference.label_counts}, guard flags {reference.flagged}")
    updated = {**payload, "meta": {**payload["meta"], "reference": reference.to_dict()}}
    buffer = io.BytesIO()
    torch.save(updated, buffer)
    check = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)["state_dict"]
    if check.keys() != payload["state_dict"].keys() or not all(
            torch.equal(check[k], v) and check[k].dtype == v.dtype for k, v in payload["state_dict"].items()):
        sys.exit(f"bundle_reference: {path}: the rewritten weights differ; nothing written")
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())
    print(f"  wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="bundled models (default: every one without a reference)")
    p.add_argument("--force", action="store_true", help="replace a reference already stored")
    args = p.parse_args(argv)
    for name in args.names or list(bundled_models()):
        if read_checkpoint(bundled_model(name).path)["meta"].get("reference") and not args.force:
            print(f"{name}: has a reference already (--force replaces it)")
            continue
        add_reference(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
