"""Ship a trained model inside the package under a name: its weights checked (float16 where that changes no
answer) and listed in ``src/cxrscreen/models/weights/bundled.json`` (what ``cxrscreen models`` prints and
``--model NAME`` resolves).

    .venv/bin/python scripts/bundle_model.py RUN_DIR_OR_CHECKPOINT NAME --use "what it is for" \\
        --external "ieee8023 COVID-vs-rest AUROC=0.70 [0.63, 0.77]" [--external ...] [--check DIR] [--images 64] \
        [--operating-point covid=0.90] [--known-limit TEXT ...]

The weights are stored as float16 (half the file) if its probabilities stay within 1e-3 of the float32 model's on
``--images`` X-rays from ``--check`` (default: the Radiography DB), through the torch backend, lung preparation
included; otherwise as float32. Resuming state is left out either way. ``--operating-point CLASS=SENSITIVITY`` (a run directory only) stores the
decision threshold of CLASS that reaches that sensitivity on the run's validation split (never its test split), so
that a user of the bundled model gets that operating point instead of the most probable class. The external figures are those measured by ``benchmarks/generalisation.py`` (MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from cxrscreen.adaptation.scores import operating_threshold
from cxrscreen.evaluation.evaluate import EvaluationConfig, evaluate_model
from cxrscreen.inference.predictor import load_predictor, resolve_model_path
from cxrscreen.models.bundled import MANIFEST, WEIGHTS_DIR
from cxrscreen.models.checkpoint import load_checkpoint, save_checkpoint, save_shipping_copy

TOLERANCE = 1e-3
DEFAULT_CHECK = Path(__file__).resolve().parents[2] / "shared" / "data" / "COVID-19_Radiography_Dataset"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="run directory or checkpoint to ship")
    p.add_argument("name", help="the name users give to --model (letters, digits, '-')")
    p.add_argument("--use", required=True, help="one line: what the model is for")
    p.add_argument("--external", action="append", default=[], metavar="MEASURE=FIGURE",
                   help="a figure on a collection it never saw (repeat)")
    p.add_argument("--check", type=Path, default=DEFAULT_CHECK, help="folder of X-rays for the float16 check")
    p.add_argument("--images", type=int, default=64, help="how many X-rays the float16 check scores")
    p.add_argument("--known-limit", action="append", default=[], metavar="TEXT",
                   help="a weakness every prediction of this model reports (repeat)")
    p.add_argument("--operating-point", metavar="CLASS=SENSITIVITY",
                   help="store CLASS's threshold for this sensitivity on the run's validation split")
    return p.parse_args(argv)


def max_probability_change(full: Path, half: Path, images: list[Path]) -> float:
    """Largest absolute difference in any class probability between the two checkpoints on ``images``."""
    probs = []
    for path in (full, half):
        predictor = load_predictor(path, backend="torch")
        results = predictor.predict_batch([str(path) for path in images])
        probs.append(np.array([[r.probabilities[c] for c in predictor.classes] for r in results]))
    return float(np.abs(probs[0] - probs[1]).max())


def validation_threshold(run_dir: str, spec: str) -> tuple[str, float]:
    """``spec`` CLASS=SENSITIVITY -> (CLASS, the threshold reaching it on the run's validation split)."""
    name, sensitivity = spec.split("=", 1)
    result = evaluate_model(EvaluationConfig(model=run_dir, split="val", n_resamples=0, progress=False, backend="torch"))
    val = result.primary
    index = val.classes.index(name)
    threshold = operating_threshold(val.probs[:, index], val.targets == index, float(sensitivity))
    print(f"{name} threshold {threshold:.4f}: sensitivity {sensitivity} on {len(val.paths)} validation images")
    return name, threshold


def with_use_notes(checkpoint: Path, thresholds: dict[str, float], known_limits: list[str]) -> None:
    """Rewrite ``checkpoint`` with ``thresholds`` as its stored operating point and ``known_limits`` added to the
    weaknesses every prediction reports."""
    model, meta = load_checkpoint(checkpoint)
    meta.thresholds = {**meta.thresholds, **thresholds}
    meta.known_limits = [*meta.known_limits, *known_limits]
    save_checkpoint(checkpoint, model, meta)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.name.replace("-", "").isalnum():
        sys.exit(f"bundle_model: name {args.name!r} must be letters, digits and '-'")
    external = dict(item.split("=", 1) for item in args.external)
    source = original = resolve_model_path(args.model)
    thresholds = dict([validation_threshold(args.model, args.operating_point)]) if args.operating_point else {}
    images = sorted(p for p in args.check.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = [images[i] for i in np.linspace(0, len(images) - 1, min(args.images, len(images))).astype(int)]
    target = WEIGHTS_DIR / f"{args.name}.pt"
    with tempfile.TemporaryDirectory() as tmp:
        if thresholds or args.known_limit:
            decided = Path(tmp) / "decided.pt"
            save_shipping_copy(source, decided)
            with_use_notes(decided, thresholds, args.known_limit)
            source = decided
        half = Path(tmp) / target.name
        save_shipping_copy(source, half, half=True)
        change = max_probability_change(source, half, images)
        keep_half = change <= TOLERANCE
        print(f"float16 weights: largest probability change {change:.2e} on {len(images)} X-rays: "
              + ("kept" if keep_half else f"over {TOLERANCE}, so float32 it is"))
        if keep_half:
            target.write_bytes(half.read_bytes())
        else:
            save_shipping_copy(source, target)
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    manifest[args.name] = {"file": target.name, "use": args.use, "external": external}
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"bundled {original} as {args.name!r}: {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
