"""`build-data --problems` with tests on string arguments that hold an apostrophe or an escape.

The checked assertion repeated the call inside an f-string (``f"got {f("it's")!r}"``), which
Python before 3.12 cannot parse: the good reference was reported as failing its own tests
(SyntaxError) and the problem skipped."""

from __future__ import annotations

import json

from reflectioncoder.cli import main as cli_main
from reflectioncoder.construct.backend import describe_failure
from reflectioncoder.construct.execute import run_tests
from reflectioncoder.construct.from_problems import parse_problem

REFERENCE = (
    "def count_a(s):\n    n = 0\n    for ch in s:\n        if ch == 'a':\n            n += 1\n"
    "    return n\n"
)
TESTS = [
    'assert count_a("it\'s a cat") == 2',
    "assert count_a('a\\nab') == 2",
    'assert count_a("say \\"aa\\"") == 3',
]


def test_string_tests_build_a_sample(tmp_path, capsys) -> None:
    problems = tmp_path / "problems.jsonl"
    row = {"id": "count_a", "prompt": "Count the a's.", "tests": TESTS, "reference": REFERENCE}
    problems.write_text(json.dumps(row) + "\n")
    out = tmp_path / "refl.jsonl"
    argv = ["build-data", "--problems", str(problems), "--out", str(out), "--timeout", "5"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 samples (1 new)" in printed and "bad problems skipped 0" in printed, printed
    sample = json.loads(out.read_text())
    assert sample["construct"]["final_passed"] is True


def test_a_failing_string_test_reports_the_value_it_got() -> None:
    problem = parse_problem({"id": "c", "prompt": "p", "tests": TESTS[:1]}, "f:1")
    wrong = "def count_a(s):\n    return len(s)\n"
    run = run_tests(problem, wrong)
    assert not run.passed and "AssertionError: got 10" in run.output, run.output
    program = problem.test_program(wrong)
    said = describe_failure(problem, program, run)
    assert said.startswith('The test `count_a("it\'s a cat") == 2` failed'), said
    assert "returned 10 instead of 2" in said
