"""How well a model's out-of-distribution guard tells chest X-rays from everything else.

Non-X-ray inputs are made here, offline: scikit-image's bundled sample photographs, generated noise and rendered
text; lateral chest views come from the ieee8023 metadata. Used by ``benchmarks/ood_guard.py`` and the tests.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "hubble_deep_field",
          "immunohistochemistry", "brick", "grass", "gravel", "clock", "cell", "logo", "colorwheel", "cat")


def rendered_text(index: int) -> np.ndarray:
    """A 256 x 256 page of text (dark on light for odd ``index``, light on dark for even)."""
    image = Image.new("L", (256, 256), 255 if index % 2 else 0)
    draw = ImageDraw.Draw(image)
    for line in range(12):
        draw.text((5, 5 + 20 * line), f"Radiology report {index}: line {line}, value {index * line}", fill=0 if index % 2 else 255)
    return np.asarray(image)


def non_xray_samples(seed: int = 0, n_noise: int = 10, n_text: int = 10) -> dict[str, list[np.ndarray]]:
    """Photographs, noise images and text renderings, as arrays ``load_xray`` accepts."""
    import skimage.data

    rng = np.random.default_rng(seed)
    half = n_noise // 2
    noise = [rng.random((128, 128)) for _ in range(half)]
    noise += [rng.normal(0.5, 0.2, (128, 128)).clip(0, 1) for _ in range(n_noise - half)]
    return {
        "photos": [getattr(skimage.data, name)() for name in PHOTOS],
        "noise": noise,
        "text": [rendered_text(i) for i in range(n_text)],
    }


def ieee_views(root: Path, views: tuple[str, ...]) -> list[Path]:
    """Images of the ieee8023 collection at ``root`` whose ``view`` is one of ``views`` (e.g. ``("L",)``)."""
    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.DictReader(fh) if row["view"] in views]
    return [path for row in rows if (path := root / "images" / row["filename"]).is_file()]


def lateral_halves(root: Path) -> dict[str, list[Path]]:
    """The ieee8023 lateral views in two halves by patient (md5 of ``patientid``, even/odd). The guard's layer was
    chosen on the "design" half; the "held-out" half was not looked at while choosing."""
    import hashlib

    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        patient = {row["filename"]: row["patientid"] for row in csv.DictReader(fh)}
    halves: dict[str, list[Path]] = {"design": [], "held-out": []}
    for path in ieee_views(root, ("L",)):
        even = int(hashlib.md5(patient[path.name].encode()).hexdigest(), 16) % 2 == 0
        halves["design" if even else "held-out"].append(path)
    return halves


def flagged_rate(predictor, sources: list) -> float:
    """Share of ``sources`` the predictor's guard calls out of distribution."""
    results = predictor.predict_batch(sources)
    decided = [r for r in results if hasattr(r, "in_distribution")]
    return float(np.mean([not r.in_distribution for r in decided])) if decided else float("nan")
