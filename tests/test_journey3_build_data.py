"""`build-data --problems`: a problem whose test line is not an assert (a `print(...)`, two
statements on one line) is a bad problem, skipped and named (file:line, the field) like the
others; the run goes on. It stopped the whole run with "not an assert line" and no file or line."""

from __future__ import annotations

import json

from reflectioncoder.cli import main

GOOD = {"id": "inc", "prompt": "Write inc(x) returning x + 1.", "tests": ["assert inc(1) == 2"]}
GOOD["reference"] = "def inc(x):\n    return x + 1\n"


def test_a_test_line_that_is_not_an_assert_is_a_skipped_problem(tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    rows = [
        {**GOOD, "id": "prints", "tests": ["print(inc(1))"]},
        GOOD,
        {**GOOD, "id": "two", "tests": ["assert inc(1) == 2; print(3)"]},
    ]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    argv = ["build-data", "--problems", str(problems), "--out", str(out), "--no-progress"]
    assert main([*argv, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {problems}:1: tests[0]: not one assert statement: 'print(inc(1))'" in printed
    assert f"skipped {problems}:3: tests[0]: not one assert statement" in printed
    assert [json.loads(x)["task_id"] for x in out.read_text().splitlines()] == ["inc"]
