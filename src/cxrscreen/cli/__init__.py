"""The command line: parses, calls the Python API, prints. Each command group lives in its own module with a
``register(subparsers)`` function; errors from the API are caught here, once, and become one line on stderr."""

from __future__ import annotations

import argparse
import importlib
import sys

from cxrscreen.errors import CxrError

COMMAND_MODULES = (
    "data",
    "train",
    "evaluate",
    "predict",
    "segment",
    "serve",
    "validity",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrscreen",
        description="Screen chest X-rays for COVID-19 and other pneumonias. A screening aid, not a diagnosis.",
    )
    from cxrscreen import __version__

    parser.add_argument("--version", action="version", version=f"cxrscreen {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"cxrscreen.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what was parsed, for commands that re-launch
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CxrError as exc:
        print(f"cxrscreen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cxrscreen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
