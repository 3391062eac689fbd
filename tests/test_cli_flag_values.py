"""Bad flag values, a table generated from the commands' parsers (every number flag of every
command): a word where a number goes, an integer past 64 bits, a negative number and a float
that is no number (nan) are each refused in one line naming the flag, exit 2, before any work
and with nothing written. Past 64 bits, `evaluate --seed` and `--threads` ended in an internal
OverflowError once the model had loaded; `build-data --timeout 1e20` rejected every sample as
an internal error; a negative `--seed` was taken where `train.seed` refuses one."""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

import pytest
from test_cli_errors import _snapshot

from reflectioncoder.cli import COMMANDS, _command_parser, main

NUMBERS = {int: "int", float: "float"}


def _number_flags() -> list[tuple[str, str, str]]:
    """(command, flag, "int" | "float") of every number flag --help shows."""
    found = []
    for name, (module, _) in sorted(COMMANDS.items()):
        for action in _command_parser(name, importlib.import_module(module))._actions:
            kind = getattr(action.type, "__name__", None)
            if (
                action.option_strings
                and action.help != argparse.SUPPRESS
                and kind in ("int", "float")
            ):
                found.append((name, max(action.option_strings, key=len), kind))
    return found


FLAGS = _number_flags()


def _argv(command: str, tmp_path: Path) -> tuple[list[str], Path]:
    """The command with what it needs to get as far as checking its flags; its output folder."""
    out = tmp_path / "out"
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    base = {
        "evaluate": [
            "--task",
            "humaneval",
            "--model",
            str(model),
            "--temperature",
            "0.5",
            "--json",
            str(out / "r.json"),
        ],  # fmt: skip
        "build-data": ["--n", "2", "--out", str(out / "d.jsonl")],
        "inspect": [
            "--data",
            str(tmp_path / "d.jsonl"),
            "--tokenizer",
            str(model),
            "--json",
            str(out / "v.json"),
        ],  # fmt: skip
    }
    return [command, *base[command]], out


def _one_line_error(capfd, argv: list[str], out: Path, *words: str) -> None:
    """The command, in-process: exit 2 (argparse's own errors exit through SystemExit), one line
    on stderr holding ``words``, the output folder as it was."""
    before = _snapshot(out)
    try:
        code = main(argv)
    except SystemExit as ended:
        code = ended.code
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"reflectioncoder {argv[0]}: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _snapshot(out) == before


def test_the_table_holds_each_commands_number_flags():
    assert {c for c, _, _ in FLAGS} == {"evaluate", "build-data", "inspect"}
    assert len(FLAGS) >= 25


@pytest.mark.parametrize("command, flag, kind", FLAGS)
def test_a_word_for_a_number_is_named(command, flag, kind, tmp_path, capfd):
    argv, out = _argv(command, tmp_path)
    _one_line_error(capfd, [*argv, flag, "many"], out, flag, f"invalid {kind} value: 'many'")


@pytest.mark.parametrize("command, flag", [(c, f) for c, f, k in FLAGS if k == "int"])
def test_an_integer_past_64_bits_is_named(command, flag, tmp_path, capfd):
    argv, out = _argv(command, tmp_path)
    _one_line_error(capfd, [*argv, flag, str(2**64)], out, flag, "out of range")


@pytest.mark.parametrize("command, flag, kind", FLAGS)
def test_a_negative_number_is_named(command, flag, kind, tmp_path, capfd):
    """No count, size, rate, duration, step or seed below 0 means anything."""
    argv, out = _argv(command, tmp_path)
    _one_line_error(capfd, [*argv, flag, "-1"], out, flag, "got -1")


@pytest.mark.parametrize("command, flag", [(c, f) for c, f, k in FLAGS if k == "float"])
def test_a_float_that_is_no_number_is_named(command, flag, tmp_path, capfd):
    argv, out = _argv(command, tmp_path)
    _one_line_error(capfd, [*argv, flag, "nan"], out, flag, "got nan")


@pytest.mark.parametrize("flag", ["--timeout", "--request-timeout"])
def test_build_data_refuses_seconds_past_a_day(flag, tmp_path, capfd):
    argv, out = _argv("build-data", tmp_path)
    _one_line_error(capfd, [*argv, flag, "1e20"], out, flag, "at most 86400", "got 1e+20")


def test_evaluate_refuses_more_threads_than_cores(tmp_path, capfd):
    argv, out = _argv("evaluate", tmp_path)
    many = str((os.cpu_count() or 1) + 1)
    _one_line_error(capfd, [*argv, "--threads", many], out, "--threads", f"got {many}")
