"""docs/cli.md and the commands in step: a section for each command, whose table lists each of
its flags and positional arguments and nothing else; every flag a document names with a
command (an inline `reflectioncoder CMD --flag` in prose; the shell blocks are parsed by
test_journey5_docs) is that command's; every flag's --help says what it is for."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from reflectioncoder.cli import COMMANDS, LAUNCH, _command_parser

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "cli.md"
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "README.md",
]


def _parser(name: str) -> argparse.ArgumentParser:
    return _command_parser(name, importlib.import_module(COMMANDS[name][0]))


def _arguments(name: str) -> set[str]:
    """A command's flags (their long names) and positional arguments (upper case), as --help
    shows them; a hidden one (a removed flag kept to refuse it in one line) is not listed."""
    names = set()
    for action in _parser(name)._actions:
        if action.help == argparse.SUPPRESS or action.dest == "help":  # said once, above
            continue
        if action.option_strings:
            names.add(max(action.option_strings, key=len))
        else:
            names.add((action.metavar or action.dest).upper())
    return names


def _reference() -> dict[str, set[str]]:
    """docs/cli.md: command -> the first cell's names of each row of its section's table."""
    tables: dict[str, set[str]] = {}
    command = None
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"### `reflectioncoder ([a-z-]+)`", line)
        if heading:
            command = heading.group(1)
            tables[command] = set()
        elif command and line.startswith("| `"):
            first = line.split("|")[1].strip().strip("`").split(" ")[0]
            tables[command].add(first)
    return tables


def test_the_reference_has_a_section_for_each_command():
    assert set(_reference()) == set(COMMANDS) | {LAUNCH[0]}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_reference_lists_each_flag_of_the_command_and_no_other(name):
    listed = _reference()[name]
    assert listed == _arguments(name), (
        f"docs/cli.md, {name}: missing {sorted(_arguments(name) - listed)}, "
        f"not a flag {sorted(listed - _arguments(name))}"
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_says_what_each_flag_is_for(name, capsys):
    """--help runs (exit 0) and each flag has a help text of its own, not its name again."""
    with pytest.raises(SystemExit) as done:
        _parser(name).parse_args(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in _parser(name)._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        words = re.findall(r"[a-z]+", (action.help or "").lower())
        own = set(action.dest.split("_"))
        assert len(set(words) - own) >= 2, (name, action.option_strings, action.help)
        assert " ".join(action.help.split())[:30] in text


def _inline_commands() -> list[tuple[str, str, str]]:
    """(document, command, text) of each `reflectioncoder CMD ...` inline code span in prose."""
    found = []
    for path in DOCUMENTS:
        prose = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
        for span, command in re.findall(r"`(reflectioncoder ([a-z-]+)[^`]*)`", prose):
            if command in COMMANDS:
                found.append((path.name, command, span))
    return found


def test_a_flag_named_with_a_command_in_prose_is_that_commands():
    spans = _inline_commands()
    assert len(spans) >= 20
    strays = []
    for document, command, span in spans:
        flags = {o for a in _parser(command)._actions for o in a.option_strings}
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", span):
            if flag not in flags:
                strays.append(f"{document}: {span}: {flag}")
    assert not strays
