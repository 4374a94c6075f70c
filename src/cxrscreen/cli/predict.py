"""``cxrscreen predict``, ``cxrscreen explain`` and ``cxrscreen export``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TextIO

from cxrscreen import SCREENING_NOTICE
from cxrscreen.data.imageio import iter_image_files
from cxrscreen.errors import ConfigError, CxrError
from cxrscreen.explain.overlay import write_explanation
from cxrscreen.inference.predictor import (
    BACKENDS,
    DEFAULT_BATCH_SIZE,
    Prediction,
    PredictionFailure,
    check_target,
    load_predictor,
)

FORMATS = ("table", "csv", "json")


def register(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict", help="classify chest X-rays (files or folders)", description="Classify chest X-rays. " + SCREENING_NOTICE
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files (PNG, JPEG, DICOM) or folders (recursed)")
    add_model_arguments(predict)
    predict.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    predict.add_argument("--explain", type=Path, metavar="DIR", help="also write <stem>_gradcam.png per image into DIR")
    predict.add_argument("--target", metavar="CLASS", help="class Grad-CAM explains (default: the predicted class)")
    predict.add_argument("--backend", choices=BACKENDS, default="torch", help="inference engine (default: torch)")
    predict.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help="images per forward pass")
    predict.set_defaults(func=run_predict)

    explain = subparsers.add_parser("explain", help="write Grad-CAM overlays of chest X-rays")
    explain.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursed)")
    add_model_arguments(explain)
    explain.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for <stem>_gradcam.png files")
    explain.add_argument("--target", metavar="CLASS", help="class to explain (default: the predicted class)")
    explain.add_argument("--save-array", action="store_true", help="also write the float heatmap as <stem>_gradcam.npy")
    explain.set_defaults(func=run_explain)

    export = subparsers.add_parser("export", help="export a model to ONNX (self-describing: metadata inside)")
    add_model_arguments(export)
    export.add_argument("--onnx", type=Path, required=True, metavar="OUT", help="the .onnx file to write")
    export.set_defaults(func=run_export)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="FILE", help="checkpoint .pt, run directory or .onnx (default: bundled model)")


def image_files(paths: list[str]) -> list[Path]:
    files = iter_image_files(paths)
    if not files:
        raise ConfigError(f"{', '.join(paths)}: no PNG, JPEG or DICOM files found")
    return files


def report_failure(failure: PredictionFailure | str) -> None:
    print(str(failure), file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    predictor = load_predictor(args.model, backend=args.backend, batch_size=args.batch_size)
    if args.explain:
        check_target(args.target, predictor.classes)
    files = image_files(args.paths)
    stems = UniqueStems()
    failed = 0
    writer = OutputWriter(args.format, predictor.classes, sys.stdout)
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        for path, result in zip(chunk, predictor.predict_batch([str(p) for p in chunk])):
            if isinstance(result, PredictionFailure):
                failed += 1
                report_failure(result)
                continue
            if args.explain and not explain_one(predictor, path, args.explain / stems(path), args.target, False):
                failed += 1
            writer.row(result)
    writer.finish(failed)
    return 1 if failed else 0


class UniqueStems:
    """Output name stems, one per input file: ``<stem>``, then ``<stem>-2``, ... when folders repeat a name."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, path: Path) -> str:
        count = self.seen.get(path.stem, 0) + 1
        self.seen[path.stem] = count
        return path.stem if count == 1 else f"{path.stem}-{count}"


def explain_one(predictor, path: Path, out_prefix: Path, target: str | None, save_array: bool) -> bool:
    """Write one image's Grad-CAM files at ``out_prefix`` + ``_gradcam.png``; on a bad image report
    ``path: reason`` on stderr and return False."""
    try:
        write_explanation(predictor.explain(str(path), target), out_prefix, save_array)
    except CxrError as exc:
        report_failure(str(exc))
        return False
    return True


def run_explain(args: argparse.Namespace) -> int:
    predictor = load_predictor(args.model)
    check_target(args.target, predictor.classes)
    stems = UniqueStems()
    failed = 0
    for path in image_files(args.paths):
        prefix = args.out / stems(path)
        if explain_one(predictor, path, prefix, args.target, args.save_array):
            print(f"{prefix}_gradcam.png")
        else:
            failed += 1
    return 1 if failed else 0


def run_export(args: argparse.Namespace) -> int:
    from cxrscreen.inference.onnx_export import export_onnx, read_onnx_meta
    from cxrscreen.inference.predictor import resolve_model_path

    out = export_onnx(resolve_model_path(args.model), args.onnx)
    print(out)
    if read_onnx_meta(out).preprocessing.needs_lungs:
        # The model's inputs depend on the lung segmenter: ship it beside the classifier.
        from cxrscreen.models.segmenter import export_segmenter_onnx

        print(export_segmenter_onnx(out.with_name(f"{out.stem}_lungs.onnx")))
    return 0


class OutputWriter:
    """Prints predictions as they come (table, CSV) or at the end (JSON), then the screening-aid notice."""

    def __init__(self, fmt: str, classes: list[str], stream: TextIO):
        self.fmt = fmt
        self.classes = classes
        self.stream = stream
        self.rows: list[dict] = []
        self.csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(csv_header(classes))
        elif fmt == "table":
            print(self._table_line("label", [f"p_{c}" for c in classes], "path"), file=stream)

    @staticmethod
    def _table_line(label: str, cells: list[str], path: str) -> str:
        # The path goes last so that long paths are never cut.
        return f"{label:<18}  " + "  ".join(f"{c:>10}" for c in cells) + f"  {path}"

    def row(self, prediction: Prediction) -> None:
        probs = [prediction.probabilities[c] for c in self.classes]
        if self.csv is not None:
            self.csv.writerow(csv_row(prediction, self.classes))
        elif self.fmt == "table":
            print(self._table_line(prediction.label, [f"{p:.3f}" for p in probs], prediction.source), file=self.stream)
        else:
            self.rows.append(json_row(prediction))

    def finish(self, failed: int) -> None:
        if self.fmt == "json":
            json.dump({"notice": SCREENING_NOTICE, "predictions": self.rows}, self.stream, indent=2)
            self.stream.write("\n")
        elif self.fmt == "table":
            if failed:
                print(f"{failed} file(s) could not be read (see above).", file=self.stream)
            print(SCREENING_NOTICE, file=self.stream)


def csv_header(classes: list[str]) -> list[str]:
    return ["path", "label", *[f"p_{c}" for c in classes]]


def csv_row(prediction: Prediction, classes: list[str]) -> list[str]:
    return [prediction.source, prediction.label, *[f"{prediction.probabilities[c]:.6f}" for c in classes]]


def json_row(prediction: Prediction) -> dict:
    data = prediction.to_dict()
    data.pop("notice")
    return {"path": data.pop("source"), **data}

