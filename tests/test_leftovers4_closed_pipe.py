"""A command whose reader closes stdout (``| head``, ``less`` quit early) is not stopped by it:
it exits with the status it would have had, prints no BrokenPipe error, and writes the files it
was asked for. It exited 141 (a ``set -o pipefail`` script failed on ``eval-setup --print |
head``), and stopped at the print, so that what it wrote after was lost: evaluate's --json
result under PYTHONUNBUFFERED=1 (every print reaches the pipe at once), inspect's --json. One
handling for every command: ``cli.guarded``'s stdout (``ReaderGone``). Each is a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer

CLI = [sys.executable, "-m", "reflectioncoder.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _reader_gone(argv: list[str]) -> tuple[int, str]:
    """Run the command with its stdout's reader closed before it prints: (status, stderr)."""
    proc = subprocess.Popen(
        [*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True
    )
    proc.stdout.close()  # the reader is gone: every write to stdout meets a closed pipe
    err = proc.stderr.read()
    return proc.wait(timeout=300), err


def _quiet(err: str) -> None:
    assert "Traceback" not in err and "BrokenPipe" not in err and "Broken pipe" not in err, err


def _status_on_a_terminal(argv: list[str]) -> int:
    return subprocess.run([*CLI, *argv], capture_output=True, env=ENV, timeout=300).returncode


def test_eval_setup_print_into_head_exits_as_it_would_have():
    code, err = _reader_gone(["eval-setup", "--print"])
    _quiet(err)
    assert code == _status_on_a_terminal(["eval-setup", "--print"])  # 0, or 1: toolchains missing
    piped = subprocess.run(
        f"set -o pipefail; {' '.join(CLI)} eval-setup --print --languages python | head -1",
        shell=True, executable="/bin/bash", capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    _quiet(piped.stderr)


def test_top_level_help_into_a_closed_pipe_exits_0():
    code, err = _reader_gone(["--help"])
    assert code == 0
    _quiet(err)


@pytest.mark.slow  # inspect imports torch: about 20 s on a loaded 2-core machine
def test_inspect_writes_its_json_when_the_reader_is_gone(tmp_path):
    data = write_toy_jsonl(tmp_path / "d.jsonl", 6, seed=0)
    texts = [line for line in data.read_text().splitlines()]
    train_tokenizer(texts, 300, tmp_path / "tok")
    out = tmp_path / "views.json"
    argv = ["inspect", "--data", str(data), "--tokenizer", str(tmp_path / "tok"),
            "--json", str(out), "--no-progress"]  # fmt: skip
    code, err = _reader_gone(argv)
    assert code == 0, err
    _quiet(err)
    assert len(json.loads(out.read_text())) == 6


def test_evaluate_writes_its_result_when_the_reader_is_gone(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        '{"task_id": "HumanEval/0", "completion": "    return False\\n"}\n'
        '{"task_id": "HumanEval/1", "completion": "    return []\\n"}\n'
    )
    out = tmp_path / "result.json"
    argv = ["evaluate", "--task", "humaneval", "--samples", str(samples), "--limit", "2",
            "--json", str(out), "--no-progress"]  # fmt: skip
    code, err = _reader_gone(argv)
    assert code == 0, err
    _quiet(err)
    assert json.loads(out.read_text())["task"] == "humaneval"
    assert f"result: {out}" in err
