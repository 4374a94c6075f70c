"""``cxrscreen dicom screen`` (DICOM files -> structured reports and Grad-CAM captures) and ``cxrscreen dicom
listen`` (a DICOM node: receive from a PACS, screen, send the results back)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrscreen import SCREENING_NOTICE
from cxrscreen.cli.batch import batch_exit_code, say
from cxrscreen.cli.predict import (
    add_audit_log_argument,
    add_backend_argument,
    add_inference_arguments,
    add_model_arguments,
    load_for_inference,
)

DEFAULT_OUTPUTS = "sr,sc"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dicom", help="screen DICOM chest X-rays and answer in DICOM (files, or as a node a PACS sends to)",
        description="Screen DICOM chest X-rays; results are DICOM objects in the source's study. " + SCREENING_NOTICE,
    )
    commands = parser.add_subparsers(dest="dicom_command", metavar="COMMAND", required=True)
    screen = commands.add_parser(
        "screen", help="write a structured report (SR) and a Grad-CAM capture (SC) per DICOM chest X-ray",
        description="Screen DICOM files; per frontal CR/DX chest X-ray write <SOPInstanceUID>_sr.dcm (TID 1500 "
        "report) and <SOPInstanceUID>_sc.dcm (burned-in Grad-CAM). Laterals, other modalities, multi-frame and "
        "pixel-less objects are named on stderr with the reason, and get no result. " + SCREENING_NOTICE,
    )
    screen.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (recursed)")
    screen.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the result files")
    add_common_arguments(screen)
    screen.set_defaults(func=run_screen)
    from cxrscreen.cli.dicom_listen import register_listen  # the node's flags, in their own module

    register_listen(commands, add_common_arguments)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", default=DEFAULT_OUTPUTS, metavar="KINDS",
                        help="result objects per screened image: sr (structured report), sc (Grad-CAM capture)")
    add_model_arguments(parser)
    add_backend_argument(parser)
    add_inference_arguments(parser)
    add_audit_log_argument(parser)


def run_screen(args: argparse.Namespace) -> int:
    from cxrscreen.dicom.screen import DicomScreener, dicom_files, parse_outputs, screen_files
    from cxrscreen.monitoring.observers import build_monitoring

    outputs = parse_outputs(args.outputs)
    listing = dicom_files(args.paths)
    for folder, count in listing.skipped.items():
        say(f"{folder}: skipped {count} file(s) that are not DICOM", sys.stderr)
    for path, reason in listing.refused.items():
        say(f"{path}: {reason}", sys.stderr)
    if not listing.files:
        if not listing.refused:  # each refused path has had its line already
            say(f"{', '.join(args.paths)}: no DICOM files to screen", sys.stderr)
        return 2
    predictor = load_for_inference(args)
    with build_monitoring(predictor, audit_log=args.audit_log, drift=False) as monitoring:
        screener = DicomScreener(predictor, outputs, observers=monitoring.observers)
        return report_screening(screen_files(listing.files, args.out, screener), len(listing.refused))


def report_screening(outcomes, failed: int) -> int:
    """Print one line per screened file (stdout) or skipped/failed one (stderr); the batch's exit code."""
    done = 0
    for path, outcome, written in outcomes:
        if outcome.screened:
            done += 1
            prediction = outcome.prediction
            label = f"{prediction.label} p={prediction.probabilities[prediction.label]:.3f}" if prediction.in_distribution else prediction.label
            print(f"{path}\t{label}\t{' '.join(str(p) for p in written)}", flush=True)
        elif outcome.failed:
            failed += 1
            say(f"{path}: {outcome.reason}", sys.stderr)
        else:
            done += 1
            say(f"{path}: not screened: {outcome.reason}", sys.stderr)
    return batch_exit_code(done, failed)
