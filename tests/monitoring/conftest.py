"""Predictions to watch: real ones from a small checkpoint with a guard, and events built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrscreen.inference.predictor import Predictor, load_predictor


@pytest.fixture(scope="session")
def watched_predictor(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory, radiography_root: Path) -> Predictor:
    """The small 3-class model with a whole-image OOD guard fitted on 40 real X-rays, and a reference built from
    its own outputs on 60 others (:func:`reference_files`) (what training stores)."""
    import numpy as np

    from cxrscreen.guard.inputs import GUARD_NETWORK, guard_thumbnails
    from cxrscreen.guard.network import torch_guard_features
    from cxrscreen.guard.ppca import fit_scored_ood_guard
    from cxrscreen.metrics.reference import build_reference

    files = sorted((radiography_root / "Normal" / "images").glob("*.jpg"))
    guard, _ = fit_scored_ood_guard(torch_guard_features(guard_thumbnails(files[:40])[0]), features="whole_image",
                                    network=GUARD_NETWORK)
    path = checkpoint_factory(tmp_path_factory.mktemp("watched") / "watched.pt", head_scale=1.0,
                              name="watched-model", ood=guard)
    predictor = load_predictor(path, device="cpu", threads=1)
    results = predictor.predict_batch([str(p) for p in reference_files(files)])
    probs = np.array([[r.probabilities[c] for c in predictor.classes] for r in results])
    reference = build_reference(probs, probs.argmax(axis=1), predictor.classes,
                                np.array([r.ood_score for r in results]), guard["threshold"], source="60 normals")
    from cxrscreen.models.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(path)
    meta.reference = reference.to_dict()
    save_checkpoint(path.with_name("watched-with-reference.pt"), model, meta)
    return load_predictor(path.with_name("watched-with-reference.pt"), device="cpu", threads=1)


def reference_files(files: list[Path]) -> list[Path]:
    """60 of the normals after the guard's 40: two of every three, so that the others come from the same mix."""
    return [path for i, path in enumerate(files[40:130]) if i % 3]


@pytest.fixture(scope="session")
def normal_files(radiography_root: Path) -> list[Path]:
    """30 normals of the same mix as the reference's, not among them."""
    return [path for i, path in enumerate(sorted((radiography_root / "Normal" / "images").glob("*.jpg"))[40:130])
            if i % 3 == 0]
