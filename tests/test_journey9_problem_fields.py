"""`build-data --problems` on a file with the mistakes users make: each bad problem is one
line naming file, line and field, in the file's terms (a prompt given as a list said `missing or
empty`; tests given as a number, or a test that is not a string, said only `expected a
non-empty list of assert lines`), and the good problem of the file still becomes a sample
(Windows line endings too)."""

from __future__ import annotations

import json

from reflectioncoder.cli import main

GOOD = {
    "id": "add_one",
    "prompt": "Write `add_one(x)` returning x + 1.",
    "reference": "def add_one(x):\n    return x + 1\n",
    "tests": ["assert add_one(1) == 2", "assert add_one(-1) == 0"],
}


def test_each_bad_problem_is_named_and_the_good_one_kept(tmp_path, capsys):
    bad = [
        {**GOOD, "id": "a", "prompt": ["Write", "it"]},
        {**GOOD, "id": "b", "tests": 5},
        {**GOOD, "id": "c", "tests": ["assert add_one(1) == 2", None]},
        {key: value for key, value in {**GOOD, "id": "d"}.items() if key != "tests"},
        {**GOOD, "id": "e", "tests": []},
    ]
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(r) + "\r\n" for r in [GOOD, *bad]))
    out = tmp_path / "out.jsonl"
    code = main(["build-data", "--problems", str(problems), "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    wanted = "a non-empty list of assert lines, or one string of them"
    for n, said in [
        (2, "prompt: expected a string, got a list"),
        (3, f"tests: expected {wanted}, got 5"),
        (4, "tests[1]: expected a string, got null"),
        (5, f"tests: missing ({wanted})"),
        (6, f"tests: expected {wanted}, got an empty list"),
    ]:
        assert f"  skipped {problems}:{n}: {said}\n" in printed
    (sample,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert sample["task_id"] == "add_one"
