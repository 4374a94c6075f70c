"""``cxrscreen monitor``: hold an audit log against the model's reference and say what drifted."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxrscreen.cli.batch import say

FORMATS = ("table", "json")


def register(subparsers: argparse._SubParsersAction) -> None:
    from cxrscreen.monitoring.settings import DriftSettings  # light: scipy loads when the command runs

    defaults = DriftSettings()
    parser = subparsers.add_parser(
        "monitor", help="check an audit log for drift against the model's reference (exit 1 on an alarm)",
        description="Compare each window of recently screened images in an audit log (serve/predict --audit-log) "
        "with what the model did on its own validation images: label shares, guard-flag rate, the positive "
        "class's probability and the guard score. Exits 1 when an alarm stands (the latest window moved).")
    parser.add_argument("log", type=Path, metavar="LOG", help="the audit log (JSON lines)")
    parser.add_argument("--model", metavar="MODEL", help="the model that wrote the log (default: the bundled model "
                        "whose checkpoint hash the log names)")
    parser.add_argument("--window", type=int, default=defaults.window, metavar="N", help="images per look")
    parser.add_argument("--step", type=int, default=defaults.step, metavar="N", help="images between looks")
    parser.add_argument("--alpha", type=float, default=defaults.alpha,
                        help="chance of a false alarm within --horizon images")
    parser.add_argument("--horizon", type=int, default=defaults.horizon, metavar="N",
                        help="images over which --alpha holds (Bonferroni over its looks)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw each quantity over time against the reference (default: no plot)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--every", type=int, metavar="N",
                        help="table: a row every N images (default: 5 looks), plus the first alarm and the last look")
    parser.set_defaults(func=run_monitor)


def run_monitor(args: argparse.Namespace) -> int:
    from cxrscreen.errors import ConfigError
    from cxrscreen.monitoring.settings import DriftSettings
    from cxrscreen.monitoring.report import monitor_log

    settings = DriftSettings(window=args.window, step=args.step, alpha=args.alpha, horizon=args.horizon)
    if args.every is not None and args.every < 1:
        raise ConfigError(f"--every must be at least 1, got {args.every}")
    report = monitor_log(args.log, args.model, settings)
    for note in report.notes():
        say(f"cxrscreen: warning: {note}", sys.stderr)
    if args.plot:
        from cxrscreen.monitoring.plot import plot_drift

        say(f"plot: {plot_drift(report, args.plot)}", sys.stderr)
    if args.format == "json":
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(report, args.every or 5 * settings.step)
    return 1 if report.alarm else 0


def print_table(report, every: int) -> None:
    def out(line: str) -> None:
        say(line, sys.stdout)

    reference = report.reference
    out(f"model {report.model.name} v{report.model.version} (sha256 {report.model.sha256[:12]}...), reference: "
        f"{reference.source or f'{reference.images} images'}")
    out(f"{len(report.observations)} screened image(s), {report.unscreened} unscreened; windows of "
        f"{report.settings.window}, a look every {report.settings.step}; false alarms <= {report.settings.alpha:g} "
        f"per {report.settings.horizon} images (Holm over the quantities, Bonferroni over the looks)")
    if not report.looks:
        return
    names = [q.name for q in report.looks[0].quantities]
    out(f"{'images':<12}" + "".join(f"{name:>16}" for name in names) + "  moved (corrected p)")
    out(f"{'reference':<12}" + "".join(f"{q.reference:>16}" for q in report.looks[0].quantities))
    first = report.first_alarm
    for look in report.looks:
        if look.last % every == 0 or look is first or look is report.looks[-1]:
            cells = "".join(f"{q.window + ('*' if q.moved else ''):>16}" for q in look.quantities)
            out(f"{f'{look.first}-{look.last}':<12}{cells}  {look.describe()}")
    if first is None:
        out("no alarm: nothing moved beyond what windows of the reference's own images do")
    else:
        out(f"first alarm at image {first.last}: {first.describe()}")
    out("ALARM: " + report.looks[-1].describe() if report.alarm else "no alarm stands")
