"""--help that a person reads: examples kept as lines, every option with help and its default,
the MultiPL-E languages listed, --version."""

from __future__ import annotations

import argparse
import importlib

import pytest

from reflectioncoder import __version__
from reflectioncoder.cli import COMMANDS, _command_parser, main
from reflectioncoder.eval.multiple import LANGUAGES


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default(name):
    parser = _command_parser(name, importlib.import_module(COMMANDS[name][0]))
    text = parser.format_help()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        assert action.help, f"{name} {action.option_strings}: no help"
        default = action.default
        if (
            action.nargs != 0
            and default is not False
            and default not in (None, [], argparse.SUPPRESS)
        ):
            shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
            assert f"default: {shown}" in " ".join(text.split()) or "default" in action.help, (
                name,
                action.option_strings,
            )


def test_top_help_keeps_examples_as_lines_and_has_a_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.strip().startswith("reflectioncoder train --preset tiny") for line in lines)
    assert any(line.strip().startswith("reflectioncoder evaluate --task") for line in lines)
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"reflectioncoder {__version__}"


def test_evaluate_help_lists_the_multiple_languages():
    parser = _command_parser("evaluate", importlib.import_module(COMMANDS["evaluate"][0]))
    text = " ".join(parser.format_help().split())
    for lang in LANGUAGES:
        assert lang in text


@pytest.mark.parametrize("name", ["train", "evaluate", "build-data", "prepare-data", "inspect"])
def test_long_commands_take_no_progress(name):
    parser = _command_parser(name, importlib.import_module(COMMANDS[name][0]))
    assert any("--no-progress" in a.option_strings for a in parser._actions)
