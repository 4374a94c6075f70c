"""Shortcut audit: how much does a model rely on what lies outside the lungs?

Each image is scored three times: as it is, with the lung fields hidden (the segmenter's lung mask, dilated a
little, set to the image mean) and with only the lung fields kept (everything else set to the image mean). The
edits happen on the decoded X-ray, before the model's own preprocessing, so the audit works for any recipe. A
model that still separates COVID from the rest with the lungs hidden reads something other than the lungs
(markers, text, body size, the scanner): a shortcut. The audit also measures where Grad-CAM puts its mass (share
inside the lung mask, per class) and, when the images come from more than one source, whether a linear probe can
tell the sources apart from the model's features (:mod:`cxrscreen.evaluation.probe`).

Images whose lungs the segmenter cannot find are left out and counted: the edits would be meaningless there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cxrscreen import SCREENING_NOTICE
from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE
from cxrscreen.data.imageio import load_xray, to_float, to_uint8
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.lung_focus import dilate, hide_lungs, keep_only_lungs
from cxrscreen.data.records import Record
from cxrscreen.data.sources import task_class
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.errors import ConfigError, CxrError, DatasetLayoutError
from cxrscreen.evaluation.evaluate import EvaluationConfig, Evaluator, all_findings_label_set
from cxrscreen.evaluation.probe import ProbeResult, source_probe
from cxrscreen.evaluation.tables import format_interval, format_table
from cxrscreen.explain.gradcam import GradCam
from cxrscreen.io_utils import write_json
from cxrscreen.run_dir import AUDIT_FILE, RunDir
from cxrscreen.lungs.finder import SegmenterFinder, load_lung_finder
from cxrscreen.metrics.classification import BinaryMetrics, MulticlassMetrics, class_vs_rest, multiclass_metrics

VARIANTS = ("original", "lungs_hidden", "lungs_only")
VARIANT_TITLES = {"original": "as they are", "lungs_hidden": "lungs hidden", "lungs_only": "only lungs kept"}
POSITIVE = "covid"
# With the lungs hidden, an AUROC at or above this means the model finds its answer elsewhere.
SHORTCUT_AUROC = 0.70
# Keeping only the lungs may cost this much AUROC for a model that "relies on the lungs".
LUNG_TOLERANCE = 0.05
# Below this AUROC on the unedited images the model is too weak for the edits to say anything.
USEFUL_AUROC = 0.60
PREDICT_CHUNK = 128


@dataclass
class AuditConfig:
    """What to audit; the CLI maps its flags onto these fields.

    ``model``: run directory, checkpoint or None (bundled default). ``data``: collections (default: the run's
    training data, on the ``split`` side of its split); other collections are audited on all their images after
    leaving out near-duplicates of the model's training images. ``max_images``: a seeded random sample of at most
    this many images. ``gradcam_per_class``: images per class whose Grad-CAM mass is measured. ``segmenter``: lung
    segmenter weight file (default: the bundled one). ``out``: folder for ``audit.json`` (default ``RUN/audit``
    for a run directory; nothing is written for a file without it).
    """

    data: list[str] = field(default_factory=list)
    model: str | None = None
    split: str = "test"
    max_images: int | None = None
    mask_dilation: float = 0.04
    gradcam_per_class: int = 8
    probe_folds: int = 5
    n_resamples: int = 1000
    seed: int = 0
    dedup_distance: int = DEFAULT_MAX_DISTANCE
    segmenter: str | None = None
    out: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_images is not None and self.max_images < 2:
            raise ConfigError(f"--max-images must be at least 2, got {self.max_images}")
        if not 0.0 <= self.mask_dilation <= 0.5:
            raise ConfigError(f"--mask-dilation must be between 0 and 0.5, got {self.mask_dilation}")
        if self.gradcam_per_class < 0:
            raise ConfigError(f"--gradcam-per-class must be 0 or more, got {self.gradcam_per_class}")


@dataclass
class VariantScore:
    """Scores of one variant (``original``, ``lungs_hidden``, ``lungs_only``) of the audited images."""

    variant: str
    covid_vs_rest: BinaryMetrics | None
    multiclass: MulticlassMetrics | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "covid_vs_rest": None if self.covid_vs_rest is None else self.covid_vs_rest.to_dict(),
            "multiclass": None if self.multiclass is None else self.multiclass.to_dict(),
        }


@dataclass
class AuditResult:
    """What :func:`audit_model` measured. ``gradcam_lung_share``: mean share of Grad-CAM mass inside the lung mask per true class (and ``all``), for the
    predicted class's map; ``lung_area_share``: the mean share of the network input the lungs cover (what a map
    spread evenly would score). ``probe`` is None with a single source.
    """

    model: str
    model_name: str
    data: list[str]
    classes: list[str]
    n_images: int
    lungs_not_found: int
    unreadable: list[tuple[str, str]]
    left_out_near_duplicates: int | None
    scores: dict[str, VariantScore]
    gradcam_lung_share: dict[str, float]
    gradcam_images: dict[str, int]
    lung_area_share: float
    probe: ProbeResult | None
    verdict: str
    notes: list[str] = field(default_factory=list)
    mask_dilation: float = 0.04

    def to_dict(self) -> dict[str, Any]:
        return {
            "notice": SCREENING_NOTICE,
            "model": self.model,
            "model_name": self.model_name,
            "data": list(self.data),
            "classes": list(self.classes),
            "images_audited": self.n_images,
            "lungs_not_found": self.lungs_not_found,
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "left_out_near_duplicates": self.left_out_near_duplicates,
            "mask_dilation": self.mask_dilation,
            "scores": {name: score.to_dict() for name, score in self.scores.items()},
            "gradcam_lung_share": {k: _finite(v) for k, v in self.gradcam_lung_share.items()},
            "gradcam_images": dict(self.gradcam_images),
            "lung_area_share": _finite(self.lung_area_share),
            "source_probe": None if self.probe is None else self.probe.to_dict(),
            "verdict": self.verdict,
            "notes": list(self.notes),
        }


def _finite(value: float) -> float | None:
    return round(float(value), 6) if np.isfinite(value) else None


# -- the image edits ------------------------------------------------------------------------------------------


def lung_edits(image: np.ndarray, mask: np.ndarray, dilation: float = 0.04) -> dict[str, np.ndarray]:
    """The three variants of one X-ray (float32 (H, W) in [0, 1]) given its lung mask (bool (H, W)): ``{"original",
    "lungs_hidden", "lungs_only"}`` -> float32 (H, W) in [0, 1]. The mask is dilated by ``dilation`` x the shorter
    side first, so hiding covers the lung borders and keeping keeps them."""
    grown = dilate(mask.astype(bool), dilation)
    return {
        "original": image.astype(np.float32, copy=False),
        "lungs_hidden": hide_lungs(image, grown),
        "lungs_only": keep_only_lungs(image, grown),
    }


def gradcam_lung_shares(model, inputs: np.ndarray, masks: np.ndarray, class_index: Sequence[int]) -> np.ndarray:
    """Share of each Grad-CAM map's mass inside the lungs: inputs float32 (N, S, S) in [0, 1], masks bool (N, S, S)
    in the same frame, ``class_index`` (N,) the class explained. NaN where the map is empty (no positive evidence)."""
    import torch

    if len(inputs) == 0:
        return np.zeros(0)
    heatmaps, _ = GradCam(model)(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))[:, None], list(class_index))
    total = heatmaps.sum(axis=(1, 2))
    inside = (heatmaps * masks).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


# -- scoring --------------------------------------------------------------------------------------------------


def score_variant(
    variant: str,
    probs: np.ndarray,
    targets: np.ndarray,
    is_covid: np.ndarray,
    classes: Sequence[str],
    groups: Sequence[str],
    n_resamples: int,
    seed: int,
) -> VariantScore:
    """COVID-vs-rest (every image; when the model has a ``covid`` class) and multiclass metrics (images with a
    class) of probabilities (N, C); ``targets`` (N,) is -1 for images without a model class."""
    covid = None
    if POSITIVE in classes:
        covid = class_vs_rest(is_covid, probs, classes, POSITIVE, n_resamples=n_resamples, seed=seed, groups=groups)
    mapped = targets >= 0
    multiclass = None
    if mapped.any():
        multiclass = multiclass_metrics(targets[mapped], probs[mapped], classes, n_resamples, seed,
                                        [g for g, keep in zip(groups, mapped) if keep])
    return VariantScore(variant, covid, multiclass)


def headline(scores: dict[str, VariantScore]) -> tuple[str, dict[str, float]]:
    """The metric the verdict uses: COVID-vs-rest AUROC where defined, else the multiclass macro-AUROC."""
    if all(s.covid_vs_rest is not None and np.isfinite(s.covid_vs_rest.auroc.value) for s in scores.values()):
        return "COVID-vs-rest AUROC", {k: s.covid_vs_rest.auroc.value for k, s in scores.items()}
    values = {k: (s.multiclass.macro_auroc.value if s.multiclass else float("nan")) for k, s in scores.items()}
    return "macro-AUROC", values


def shortcut_verdict(scores: dict[str, VariantScore]) -> str:
    """One line: ``uses shortcuts``, ``relies on the lungs``, ``mixed`` or ``no verdict``, with the numbers behind it."""
    metric, value = headline(scores)
    original, hidden, only = value["original"], value["lungs_hidden"], value["lungs_only"]
    if not all(np.isfinite(v) for v in (original, hidden, only)):
        return f"no verdict: {metric} is undefined here (the images need both outcomes)"
    if original < USEFUL_AUROC and hidden < SHORTCUT_AUROC:
        return (f"no verdict: the model scores only {metric} {original:.2f} on these images as they are, too close to "
                f"chance for the edits to tell anything ({hidden:.2f} with the lungs hidden, {only:.2f} with only the lungs)")
    if hidden >= SHORTCUT_AUROC:
        return f"uses shortcuts: still scores {metric} {hidden:.2f} with the lungs hidden ({original:.2f} as they are)"
    if only >= original - LUNG_TOLERANCE:
        return (f"relies on the lungs: {metric} {original:.2f} as they are, {only:.2f} with only the lungs kept, "
                f"{hidden:.2f} with the lungs hidden")
    return (f"mixed: {metric} falls from {original:.2f} to {only:.2f} with only the lungs kept "
            f"and to {hidden:.2f} with the lungs hidden")


def sample_per_class(targets: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` indices of each class (targets >= 0), seeded, sorted."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(targets == c))[:per_class] for c in np.unique(targets[targets >= 0])]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def audit_arrays(
    predictor,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    records: Sequence[Record],
    cfg: AuditConfig,
    log: Callable[[str], None] = print,
) -> AuditResult:
    """The audit proper, on decoded X-rays (float32 (H, W) in [0, 1]) with their lung masks (bool (H, W)).

    ``predictor``: a :class:`cxrscreen.inference.predictor.Predictor` (its ``torch_model`` gives Grad-CAM).
    ``records`` give each image's finding, source and patient. Lung-focused preprocessing of the model uses the
    lung mask of the unedited image, so every variant goes through the same crop.
    """
    if not records:
        raise DatasetLayoutError("no image left to audit")
    meta = predictor.meta
    pp: Preprocessing = meta.preprocessing
    classes = list(meta.classes)
    label_set = LabelSet(tuple(classes), dict(meta.label_map))
    binary_set = all_findings_label_set(meta.label_map)
    found = [task_class(r, label_set) for r in records]
    targets = np.array([-1 if c is None else classes.index(c) for c in found], dtype=np.int64)
    is_covid = np.array([task_class(r, binary_set) == POSITIVE for r in records])
    groups = [r.group_key for r in records]

    side = pp.img_size
    inputs = {v: np.empty((len(images), side, side), dtype=np.uint8) for v in VARIANTS}
    frames = np.empty((len(images), side, side), dtype=bool)
    for i, (image, mask) in enumerate(zip(images, masks)):
        edited, frames[i] = audit_inputs(pp, image, mask, cfg.mask_dilation)
        for variant in VARIANTS:
            inputs[variant][i] = edited[variant]

    scores, features = {}, None
    for variant in VARIANTS:
        probs, feats = predict_uint8(predictor, inputs[variant])
        scores[variant] = score_variant(variant, probs, targets, is_covid, classes, groups, cfg.n_resamples, cfg.seed)
        if variant == "original":
            features, predicted = feats, probs.argmax(axis=1)

    shares, counts = gradcam_by_class(predictor, inputs["original"], frames, targets, predicted, classes, cfg)
    notes: list[str] = []
    probe = None
    sources = [r.source for r in records]
    if len(set(sources)) > 1:
        try:
            probe = source_probe(features, sources, cfg.probe_folds, cfg.seed)
        except ConfigError as exc:
            notes.append(f"no source probe: {exc}")
    return AuditResult(
        model=str(predictor.model_path),
        model_name=f"{meta.name} v{meta.version}",
        data=[],
        classes=classes,
        n_images=len(records),
        lungs_not_found=0,
        unreadable=[],
        left_out_near_duplicates=None,
        scores=scores,
        gradcam_lung_share=shares,
        gradcam_images=counts,
        lung_area_share=float(frames.mean()),
        probe=probe,
        verdict=shortcut_verdict(scores),
        notes=notes,
        mask_dilation=cfg.mask_dilation,
    )


def audit_inputs(pp: Preprocessing, image: np.ndarray, mask: np.ndarray, dilation: float) -> tuple[dict, np.ndarray]:
    """The prepared inputs (uint8 (S, S)) of the three :func:`lung_edits` of one X-ray, each framed by the lungs of
    the unedited image, and those lungs (bool (S, S)) in the frame the network sees."""
    inputs = {}
    for variant, edited in lung_edits(image, mask, dilation).items():
        prepared = pp.prepare(edited, lambda _edited: mask)  # every variant framed by the unedited lungs
        inputs[variant] = to_uint8(prepared.input)
    return inputs, prepared.to_input(mask) >= 0.5


def predict_uint8(predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) and features (N, F) of prepared uint8 images (N, S, S), in chunks."""
    probs, feats = [], []
    for start in range(0, len(images), PREDICT_CHUNK):
        outputs = predictor.predict_prepared(to_float(images[start : start + PREDICT_CHUNK]))
        probs.append(outputs.probs)
        feats.append(outputs.features)
    return np.concatenate(probs), np.concatenate(feats)


def gradcam_by_class(
    predictor, inputs: np.ndarray, frames: np.ndarray, targets: np.ndarray, predicted: np.ndarray,
    classes: Sequence[str], cfg: AuditConfig,
) -> tuple[dict[str, float], dict[str, int]]:
    """Mean Grad-CAM lung share (predicted class's map) per true class and over all, on a per-class sample."""
    chosen = sample_per_class(targets, cfg.gradcam_per_class, cfg.seed)
    if chosen.size == 0:
        return {}, {}
    share = np.concatenate([
        gradcam_lung_shares(predictor.torch_model, to_float(inputs[batch]), frames[batch], predicted[batch])
        for batch in np.array_split(chosen, max(1, int(np.ceil(len(chosen) / 32))))
    ])
    out, counts = {}, {}
    for index, name in enumerate(classes):
        values = share[(targets[chosen] == index) & np.isfinite(share)]
        if values.size:
            out[name], counts[name] = float(values.mean()), int(values.size)
    finite = share[np.isfinite(share)]
    out["all"], counts["all"] = (float(finite.mean()) if finite.size else float("nan")), int(finite.size)
    return out, counts


# -- from a model and data folders ----------------------------------------------------------------------------


def load_images(records: list[Record]) -> tuple[list[Record], list[np.ndarray], list[tuple[str, str]]]:
    """Decode every record's image; unreadable ones are returned as (path, reason) instead."""
    kept, images, unreadable = [], [], []
    for record in records:
        try:
            images.append(load_xray(record.path))
            kept.append(record)
        except CxrError as exc:
            unreadable.append((record.path, str(exc)))
    return kept, images, unreadable


def audit_model(cfg: AuditConfig | None = None, log: Callable[[str], None] = print,
                lungs: SegmenterFinder | None = None, **kwargs: Any) -> AuditResult:
    """Audit a model as ``cfg`` (or the keyword arguments of :class:`AuditConfig`) says; writes ``audit.json``.

    ``lungs``: the lung finder (default: :func:`cxrscreen.lungs.finder.load_lung_finder` of ``cfg.segmenter``, the
    engine prediction and the training cache run), whose segmenter also says why lungs were not found.

    Example (notebook): ``audit_model(model="runs/r1", data=["data/covid-chestxray-dataset"]).verdict``.
    """
    if cfg is None:
        cfg = AuditConfig(**kwargs)
    elif kwargs:
        raise ConfigError("pass either an AuditConfig or keyword arguments, not both")
    evaluator = Evaluator(EvaluationConfig(data=list(cfg.data), model=cfg.model, split=cfg.split, seed=cfg.seed,
                                           dedup_distance=cfg.dedup_distance, progress=cfg.progress,
                                           backend="torch"))  # Grad-CAM runs in torch: export nothing
    data = list(cfg.data) or evaluator.train_data
    if not data:
        raise ConfigError("--data is required: the model does not name the data it was trained on")
    lungs = lungs or load_lung_finder(cfg.segmenter)
    chosen = evaluator.select_records(data)  # the images `cxrscreen evaluate` would score
    records, left_out, notes = chosen.records, chosen.left_out, chosen.notes
    if left_out is not None:
        log(f"{', '.join(data)}: left out {left_out} near-duplicate(s) of the model's training images")
    if cfg.max_images is not None and len(records) > cfg.max_images:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(records))[: cfg.max_images])
        notes.append(f"a random sample of {cfg.max_images} of the {len(records)} images (seed {cfg.seed})")
        records = [records[i] for i in keep]
    records, images, unreadable = load_images(records)
    segmentations = lungs.segmenter().segment_batch(images)
    found = [i for i, seg in enumerate(segmentations) if seg.plausible]
    reasons = Counter(seg.reason for seg in segmentations if not seg.plausible)
    notes.extend(f"left out (lungs not found): {n} {reason}" for reason, n in reasons.most_common())
    log(f"auditing {len(found)} image(s); lungs not found on {len(segmentations) - len(found)}")
    result = audit_arrays(evaluator.predictor, [images[i] for i in found], [segmentations[i].mask for i in found],
                          [records[i] for i in found], cfg, log)
    result.data = list(data)
    result.lungs_not_found = len(segmentations) - len(found)
    result.unreadable = unreadable
    result.left_out_near_duplicates = left_out
    result.notes = notes + result.notes
    out_dir = Path(cfg.out) if cfg.out else (RunDir(evaluator.run_dir).audit_dir if evaluator.run_dir else None)
    if out_dir is not None:
        write_json(out_dir / AUDIT_FILE, result.to_dict())
        result.notes.append(f"wrote {out_dir / AUDIT_FILE}")
    return result


# -- printing -------------------------------------------------------------------------------------------------


def audit_report(result: AuditResult) -> str:
    """The printed audit: the three scores side by side, the Grad-CAM lung share, the probe and the verdict."""
    lines = [f"shortcut audit of {result.model_name} ({result.model}) on {', '.join(result.data) or 'given images'}: "
             f"{result.n_images} images (lung mask dilated by {result.mask_dilation:.0%} of the side)"]
    if result.left_out_near_duplicates is not None:
        lines.append(f"left out {result.left_out_near_duplicates} near-duplicate(s) of the model's training images")
    if result.lungs_not_found:
        lines.append(f"left out {result.lungs_not_found} image(s) whose lungs the segmenter did not find")
    if result.unreadable:
        lines.append(f"skipped {len(result.unreadable)} unreadable image(s)")
    rows = []
    for name in VARIANTS:
        score = result.scores[name]
        b, m = score.covid_vs_rest, score.multiclass
        rows.append([VARIANT_TITLES[name],
                     "-" if b is None else format_interval(b.auroc),
                     "-" if b is None else format_interval(b.sensitivity),
                     "-" if m is None else format_interval(m.macro_f1),
                     "-" if m is None else format_interval(m.accuracy)])
    lines += ["", format_table(["images", "AUROC covid-vs-rest", "sensitivity", "macro-F1", "accuracy"], rows), ""]
    if result.gradcam_lung_share:
        shares = ", ".join(f"{k} {v:.0%} (n={result.gradcam_images[k]})" for k, v in result.gradcam_lung_share.items()
                           if np.isfinite(v))
        lines.append(f"Grad-CAM mass inside the lungs: {shares}; the lungs cover {result.lung_area_share:.0%} of the input")
    if result.probe is not None:
        lines.append(result.probe.summary())
    lines.extend(f"note: {note}" for note in result.notes)
    lines.append(f"verdict: {result.verdict}")
    return "\n".join(lines)
