"""Every option of every (sub)command says what it does and what it defaults to; a misspelt option gets the usage
of the subcommand it was given to."""

from __future__ import annotations

import argparse
import re

import pytest

from cxrscreen.cli import build_parser, main


def walk(parser: argparse.ArgumentParser, name: str = "cxrscreen"):
    """``(name, parser)`` for the parser and every subparser below it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from walk(sub, f"{name} {sub_name}")


def options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


PARSERS = dict(walk(build_parser()))


def test_the_walk_reaches_nested_subcommands() -> None:
    assert {"cxrscreen train", "cxrscreen predict", "cxrscreen data cache", "cxrscreen serve"} <= set(PARSERS)


def help_problems(parser: argparse.ArgumentParser, name: str) -> list[str]:
    problems = []
    for action in options(parser):
        flag = f"{name} {action.option_strings[-1]}"
        if not (action.help and action.help.strip()):
            problems.append(f"{flag}: no help text")
        elif action.nargs == 0 or action.required or "%(default)" in action.help:
            continue  # a flag (default: off), a required option, or help that shows the default itself
        elif action.default is None or action.default == []:
            # Nothing for argparse to show: the help itself must say what happens without the option.
            if "default" not in action.help and "required" not in action.help:
                problems.append(f"{flag}: default None and the help does not say what that means")
        else:
            shown = parser._get_formatter()._expand_help(action)  # the help line as `--help` prints it
            if shown.count(f"(default: {action.default})") != 1:
                problems.append(f"{flag}: default {action.default!r} not shown once in {shown!r}")
            elif len(re.findall(r"\bdefault\b(?::| [a-z0-9])", shown)) != 1:  # "(default none...) (default: none)"
                problems.append(f"{flag}: the default is stated more than once in {shown!r}")
    return problems


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_a_default(name: str) -> None:
    assert help_problems(PARSERS[name], name) == []


def test_a_default_is_shown_once(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("(default: table)") == 1
    backend = text[text.index("--backend {auto,torch,onnx} "):text.index("--batch-size N ")]
    assert backend.count("(default:") == 1 and "(default: auto = ONNX Runtime on the CPU, torch on a CUDA GPU)" in backend


def test_misspelt_option_prints_the_subcommands_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochz", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cxrscreen train ")
    assert "[--epochs N]" in err
    assert err.strip().splitlines()[-1] == "cxrscreen train: error: unrecognized arguments: --epochz 3"


def test_misspelt_option_of_a_nested_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "cache", "x.png", "--img-sise", "64"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cxrscreen data cache ")
    assert err.strip().splitlines()[-1].startswith("cxrscreen data cache: error: unrecognized arguments: --img-sise")
