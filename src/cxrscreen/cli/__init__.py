"""The command line: parses, calls the Python API, prints. Each command group lives in its own module with a
``register(subparsers)`` function; errors from the API are caught here, once, and become one line on stderr."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from cxrscreen.errors import CxrError

COMMAND_MODULES = (
    "data",
    "train",
    "evaluate",
    "predict",
    "segment",
    "serve",
    "model_checks",
    "adapt",
    "models",
    "dicom",
    "monitor",
)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to every option's help, except where there is nothing to show: a default of None or
    an empty list (the help says what happens then), flags that take no value, and help that states its default
    itself (``default: ...``), which would otherwise be said twice."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == [] or action.nargs == 0 or states_default(action.help):
            return action.help
        return super()._get_help_string(action)


def states_default(help_text: str | None) -> bool:
    """Whether an option's help says its default itself (``(default: all)``, ``default none``); a choice named
    ``default`` (``default, none or strong``) is not a statement."""
    return bool(help_text) and re.search(r"\bdefault\b(:| [a-z0-9])", help_text) is not None


class CliParser(argparse.ArgumentParser):
    """The parser of cxrscreen and of each (sub)command: defaults in the help, and a misspelt option is reported
    with the usage of the subcommand it was given to (argparse leaves it to the top parser, whose usage lists only
    the commands)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="cxrscreen",
        description="Screen chest X-rays for COVID-19 and other pneumonias. A screening aid, not a diagnosis.",
    )
    from cxrscreen import __version__

    parser.add_argument("--version", action="version", version=f"cxrscreen {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
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
    except OSError as exc:
        # An output path that cannot be written (a file where a folder should be, no permission, disk full):
        # the user's to fix, so one line, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cxrscreen: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
