"""Untrusted text (a dataset's fields, a program's output, model-written code) reaches the
terminal with its control characters escaped: a hostile problems file cannot clear the screen,
retitle the terminal or overwrite the line printed before it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reflectioncoder.cli import main as cli_main
from reflectioncoder.errors import UserError, one_line
from reflectioncoder.printable import printable

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\rok\x08\x9b1m\u202e"


def test_control_characters_are_escaped_and_text_is_kept():
    assert printable(HOSTILE) == "\\x1b]0;pwned\\x07\\x1b[2J\\rok\\x08\\x9b1m\\u202e"
    assert printable("naïve café λ → 日本 \\ 'q'") == "naïve café λ → 日本 \\ 'q'"
    assert printable("a\n\tb\x1b") == "a\\n\\tb\\x1b"
    assert printable("a\n\tb\x1b\r", lines=True) == "a\n\tb\\x1b\\r"
    assert printable("\udc80") == "\\udc80"  # a lone surrogate: printed, not a crash


def test_one_line_errors_escape_what_they_quote():
    message, code = one_line(UserError(f"HTTP 500: {HOSTILE}", file="x.jsonl", line=3))
    assert "\x1b" not in message and "\x07" not in message and "\r" not in message
    assert message.startswith("x.jsonl:3: HTTP 500: \\x1b]0;pwned\\x07")


def test_build_data_prints_a_failing_reference_escaped(tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    hostile = {
        "id": "evil\x1b[31m",
        "prompt": "Write `f(x)`.",
        "reference": f"def f(x):\n    raise ValueError({HOSTILE.replace(chr(13), '')!r})\n",
        "tests": ["assert f(1) == 1"],
    }
    problems.write_text(json.dumps(hostile) + "\n")
    out = tmp_path / "refl.jsonl"
    argv = ["build-data", "--problems", str(problems), "--out", str(out), "--timeout", "2"]
    cli_main(argv)
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text
    skipped = next(line for line in text.splitlines() if line.startswith("  skipped "))
    assert skipped.startswith("  skipped evil\\x1b[31m: the tests fail on the reference: ")
    assert skipped.endswith("ValueError: \\x1b]0;pwned\\x07\\x1b[2Jok\\x08\\x9b1m\\u202e")


def test_prepare_data_prints_a_hostile_file_name_escaped(tmp_path, capsys):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    row = {"query": "Add one.", "answer": "def f(x):\n    return x + 1"}
    (downloads / "evil\x1b[2J.jsonl").write_text(json.dumps(row) + "\n{not json\n")
    out = tmp_path / "prepared.jsonl"
    argv = ["prepare-data", "--in", str(downloads), "--out", str(out), "--no-decontaminate"]
    assert cli_main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    assert "    e.g. " + str(downloads) + "/evil\\x1b[2J.jsonl:2:<json>: invalid JSON" in printed


def test_demo_prints_the_models_completion_escaped(monkeypatch, capsys):
    """The demo's step 4 shows model-written code and its test run's last line: escapes
    escaped, the completion's lines kept."""
    from reflectioncoder import demo

    completion = "print('\x1b[2J')\nraise ValueError('\x1b]0;pwned\x07')\n"
    monkeypatch.setattr(demo, "generate", lambda checkpoint, prompt, n: completion)
    demo._generate_and_test(Path("unused"), [], seed=0, max_new_tokens=8)
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed
    assert "print('\\x1b[2J')\n" in printed  # its own line still
    assert "failed  ValueError: \\x1b]0;pwned\\x07" in printed


def test_eval_setup_prints_apts_failure_escaped(monkeypatch, capsys):
    """apt's last lines quote what a mirror sent: shown escaped."""
    from reflectioncoder.eval import toolchains

    failed = subprocess.CompletedProcess([], 100, b"", b"E: bad reply \x1b]0;pwned\x07\n")
    monkeypatch.setattr(toolchains.subprocess, "run", lambda *a, **k: failed)
    assert toolchains._install(["mono-mcs"]) == 100
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "error: apt-get update failed: E: bad reply \\x1b]0;pwned\\x07" in err


def test_launch_reports_a_ranks_recorded_error_escaped(tmp_path):
    """The line torch recorded for a rank (an uncaught exception's message) is shown escaped."""
    errors = pytest.importorskip("torch.distributed.elastic.multiprocessing.errors")
    from reflectioncoder.launch import failure_line

    error_file = tmp_path / "error.json"
    recorded = {"message": f"RuntimeError: {HOSTILE}", "extraInfo": {"timestamp": "0"}}
    error_file.write_text(json.dumps({"message": recorded}))
    failure = errors.ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(error_file))
    line = failure_line(0, failure, 1)
    assert line.startswith("rank 0 failed (exit code 1): RuntimeError: \\x1b]0;pwned\\x07")
    assert "\x1b" not in line and "\u202e" not in line
