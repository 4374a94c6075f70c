"""``cxrscreen predict``, ``cxrscreen explain`` and ``cxrscreen export``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cxrscreen import SCREENING_NOTICE
from cxrscreen.cli.batch import UniqueStems, batch_exit_code, image_files, only_missing_files, progress, say
from cxrscreen.errors import CxrError
from cxrscreen.inference.options import BACKENDS, DEFAULT_BACKEND, DEFAULT_BATCH_SIZE, DEVICES, check_target, parse_thresholds
from cxrscreen.io_utils import writable_folder

if TYPE_CHECKING:  # the predictor (numpy, the networks' libraries) is imported when a command runs, not for --help
    from cxrscreen.inference.predictor import Prediction, PredictionFailure, Predictor

FORMATS = ("table", "csv", "json")


def register(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict", help="classify chest X-rays (files or folders)", description="Classify chest X-rays. " + SCREENING_NOTICE
    )
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="image files (PNG, JPEG, DICOM) or folders (recursed; files read by content, any name)")
    add_model_arguments(predict)
    add_inference_arguments(predict)
    predict.add_argument("--format", choices=FORMATS, default="table", help="output format")
    predict.add_argument("--explain", type=Path, metavar="DIR",
                         help="also write <stem>_gradcam.png per image into DIR (default: no overlays)")
    predict.add_argument("--target", metavar="CLASS", help="class Grad-CAM explains (default: the predicted class)")
    add_backend_argument(predict)
    predict.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help="images per forward pass")
    add_audit_log_argument(predict)
    predict.set_defaults(func=run_predict)

    explain = subparsers.add_parser("explain", help="write Grad-CAM overlays of chest X-rays")
    explain.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursed)")
    add_model_arguments(explain)
    add_inference_arguments(explain)
    explain.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for <stem>_gradcam.png files")
    explain.add_argument("--target", metavar="CLASS", help="class to explain (default: the predicted class)")
    explain.add_argument("--save-array", action="store_true", help="also write the float heatmap as <stem>_gradcam.npy")
    explain.set_defaults(func=run_explain)

    export = subparsers.add_parser("export", help="export a model to ONNX (self-describing: metadata inside)")
    add_model_arguments(export)
    export.add_argument("--onnx", type=Path, required=True, metavar="OUT", help="the .onnx file to write")
    export.set_defaults(func=run_export)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="MODEL", help="checkpoint .pt, run directory, .onnx or a bundled model's name (`cxrscreen models`; default: the bundled default)")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="inference engine (default: %(default)s = ONNX Runtime on the CPU, torch on a CUDA GPU)")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads`` and ``--threshold``: how and where a loaded model decides."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the model runs; auto = a CUDA GPU if torch sees one")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads: workers, each with single-threaded networks (default: the usable CPUs, at most 4)")
    parser.add_argument(
        "--threshold", action="append", metavar="CLASS=P",
        help="decision threshold: CLASS is predicted when its probability is at least P (repeatable; default: the "
        "model's stored operating point, else the most probable class)",
    )


def add_audit_log_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audit-log", type=Path, metavar="PATH",
                        help="append one JSON line per image to PATH (time, content hash, model and its hash, label, "
                        "probabilities, decision, guard, latency; no file or patient names; default: no log); "
                        "`cxrscreen monitor` reads it")


def load_for_inference(args: argparse.Namespace, **options) -> Predictor:
    """The predictor the inference flags of ``args`` ask for (``options``: more :func:`load_predictor` keywords)."""
    from cxrscreen.inference.predictor import load_predictor

    return load_predictor(args.model, device=args.device, threads=args.threads,
                          thresholds=parse_thresholds(args.threshold or []) or None, **options)


def report_failure(failure: PredictionFailure | str) -> None:
    say(str(failure), sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    from cxrscreen.inference.results import PredictionFailure

    files = image_files(args.paths)
    if only_missing_files(files):
        return 2
    if args.explain:
        writable_folder(args.explain, "--explain")  # an unwritable --explain fails before a model loads
    predictor = load_for_inference(args, backend=args.backend, batch_size=args.batch_size)
    if args.explain:
        check_target(args.target, predictor.classes)
    from cxrscreen.monitoring.observers import build_monitoring, monitored_predictions

    monitoring = build_monitoring(predictor, audit_log=args.audit_log, drift=False)
    stems = UniqueStems()
    failed = 0
    writer = OutputWriter(args.format, predictor.classes, sys.stdout, predictor.known_limits)
    with progress(len(files), "predicting") as bar, monitoring:
        for path, result in zip(files, monitored_predictions(predictor, files, monitoring.observers)):
            bar.update()
            if isinstance(result, PredictionFailure):
                failed += 1
                report_failure(result)
                continue
            target = args.target or predictor.decided_class(result)  # Grad-CAM need not score it again
            if args.explain and not explain_one(predictor, path, args.explain / stems(path), target, False):
                failed += 1
            writer.row(result)
    writer.finish(failed)
    return batch_exit_code(writer.count, failed)


def explain_one(predictor, path: Path, out_prefix: Path, target: str | None, save_array: bool) -> bool:
    """Write one image's Grad-CAM files at ``out_prefix`` + ``_gradcam.png``; on a bad image report
    ``path: reason`` on stderr and return False."""
    try:
        from cxrscreen.explain.overlay import write_explanation  # matplotlib: only where a plot is drawn

        write_explanation(predictor.explain(str(path), target), out_prefix, save_array)
    except CxrError as exc:
        report_failure(str(exc))
        return False
    return True


def run_explain(args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    if only_missing_files(files):
        return 2
    writable_folder(args.out, "--out")  # an unwritable --out fails before a model loads
    predictor = load_for_inference(args)
    check_target(args.target, predictor.classes)
    stems = UniqueStems()
    failed = 0
    with progress(len(files), "explaining") as bar:
        for path in files:
            prefix = args.out / stems(path)
            if explain_one(predictor, path, prefix, args.target, args.save_array):
                say(f"{prefix}_gradcam.png", sys.stdout)
            else:
                failed += 1
            bar.update()
    return batch_exit_code(len(files) - failed, failed)


def run_export(args: argparse.Namespace) -> int:
    from cxrscreen.inference.onnx_export import export_onnx
    from cxrscreen.inference.onnx_runtime import read_onnx_meta
    from cxrscreen.inference.predictor import resolve_model_path

    out = export_onnx(resolve_model_path(args.model), args.onnx)
    print(out)
    if read_onnx_meta(out).preprocessing.needs_lungs:
        # The model's inputs depend on the lung segmenter: ship it beside the classifier.
        from cxrscreen.lungs.network import export_segmenter_onnx

        print(export_segmenter_onnx(out.with_name(f"{out.stem}_lungs.onnx")))
    return 0


class OutputWriter:
    """Prints predictions as they come (table, CSV) or at the end (JSON); a table ends with the model's known
    limits and the screening-aid notice. Nothing at all is printed when no image could be predicted."""

    def __init__(self, fmt: str, classes: list[str], stream: TextIO, known_limits: list[str]):
        self.fmt = fmt
        self.classes = classes
        self.stream = stream
        self.known_limits = known_limits
        self.count = 0
        self.overruled = 0  # labels a threshold chose over the most probable class
        self.rows: list[dict] = []

    def _line(self, line: str) -> None:
        say(line, self.stream)

    def _csv_line(self, cells: list[str]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(cells)
        self._line(buffer.getvalue())

    @staticmethod
    def _table_line(label: str, cells: list[str], rule: str, path: str) -> str:
        # The path goes last so that long paths are never cut.
        return f"{label:<18}  " + "  ".join(f"{c:>10}" for c in cells) + f"  {rule:<24}  {path}"

    def row(self, prediction: Prediction) -> None:
        if self.count == 0:  # the header waits for a first row: no empty table when every file failed
            if self.fmt == "csv":
                self._csv_line(csv_header(self.classes))
            elif self.fmt == "table":
                self._line(self._table_line("label", [f"p_{c}" for c in self.classes], "rule", "path"))
        self.count += 1
        probs = [prediction.probabilities[c] for c in self.classes]
        if self.fmt == "csv":
            self._csv_line(csv_row(prediction, self.classes))
        elif self.fmt == "table":
            self.overruled += bool(prediction.decision and prediction.decision.overrules_most_probable)
            rule = prediction.decision.brief() if prediction.decision else "OOD guard"
            self._line(self._table_line(prediction.label, [f"{p:.3f}" for p in probs], rule, prediction.source))
        else:
            self.rows.append(json_row(prediction))

    def finish(self, failed: int) -> None:
        if self.count == 0:
            return
        if self.fmt == "json":
            json.dump({"notice": SCREENING_NOTICE, "predictions": self.rows}, self.stream, indent=2)
            self.stream.write("\n")
        elif self.fmt == "table":
            if failed:  # the errors' summary goes beside them, on stderr: stdout holds the results alone
                say(f"{failed} file(s) could not be read (see above).", sys.stderr)
            if self.overruled:
                self._line(f"{self.overruled} label(s) are not the most probable class: a decision threshold decided "
                           "(rule CLASS>=P: CLASS reached its threshold P; CLASS<P: CLASS stayed below it).")
            for limit in self.known_limits:
                self._line(f"Known limit: {limit}")
            self._line(SCREENING_NOTICE)


def csv_header(classes: list[str]) -> list[str]:
    # How the label was decided comes after the columns earlier versions wrote, so their readers keep working.
    return ["path", "label", *[f"p_{c}" for c in classes], "rule", "cutoff", "most_probable"]


def csv_row(prediction: Prediction, classes: list[str]) -> list[str]:
    """``rule``: most_probable, threshold, below_threshold or out_of_distribution (the OOD guard named it);
    ``cutoff``: the threshold the label reached, or ``class<P`` for each threshold no class reached."""
    decision = prediction.decision
    if decision is None:
        rule, cutoff = "out_of_distribution", ""
    elif decision.rule == "threshold":
        rule, cutoff = decision.rule, f"{decision.cutoff:g}"
    else:
        rule, cutoff = decision.rule, ";".join(f"{name}<{value:g}" for name, value in decision.below.items())
    probabilities = [f"{prediction.probabilities[c]:.6f}" for c in classes]
    return [prediction.source, prediction.label, *probabilities, rule, cutoff, prediction.top_class]


def json_row(prediction: Prediction) -> dict:
    data = prediction.to_dict()
    data.pop("notice")
    return {"path": data.pop("source"), **data}

