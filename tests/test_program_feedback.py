"""build-data's execution feedback for a program that does not compile is what `python main.py`
prints: the sandbox's own runner frames never show (they did, renamed main.py, line 267)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reflectioncoder.construct.execute import run_program


@pytest.mark.parametrize(
    "source",
    ["def f(:\n    return 1\n", "x = 1\n  y = 2\n", "print('a')\nreturn 3\n"],
    ids=["syntax", "indentation", "outside-function"],
)
def test_compile_errors_read_as_the_interpreter_prints_them(tmp_path, source):
    (tmp_path / "main.py").write_text(source)
    real = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True
    ).stderr
    real = real.replace(f'File "{tmp_path}/main.py"', 'File "main.py"').rstrip()
    got = run_program(source).output
    assert got == real
    assert "in <module>" not in got and "_run_program" not in got


def test_forcing_bwrap_where_it_cannot_run_is_one_line(tmp_path):
    """REFLECTIONCODER_SANDBOX=bwrap on a machine without bubblewrap: one line naming the
    setting and what to do (it was a RuntimeError shown as an internal error)."""
    import os

    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return True"}\n')
    env = {**os.environ, "REFLECTIONCODER_SANDBOX": "bwrap", "PATH": str(tmp_path)}
    argv = [sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", "humaneval"]
    argv += ["--samples", str(samples), "--limit", "1", "--no-progress"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("reflectioncoder evaluate: REFLECTIONCODER_SANDBOX=bwrap: bubblewrap ")
    assert "internal error" not in line and "apt-get install bubblewrap" in line
