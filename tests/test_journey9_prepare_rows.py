"""`prepare-data` says on the terminal where each kind of bad row first happened, as
`file:line:field: reason`: it printed only counts by reason (`skipped (expected a string: 1)`),
sending the user into the manifest to find the line; a value is named as JSON spells it
(`got null`, not Python's `got NoneType`)."""

from __future__ import annotations

import json

from reflectioncoder.cli import main

ANSWER = "```python\ndef add_one(x):\n    return x + 1\n```"


def test_each_kind_of_bad_row_is_shown_with_its_line(tmp_path, capsys):
    rows = [
        {"query": "Write add_one.", "answer": ANSWER},
        {"query": "Write add_two.", "answer": None},
        "{not json",
        {"query": "Write add_three.", "answer": 3},
    ]
    data = tmp_path / "codefeedback.jsonl"
    data.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    out = tmp_path / "out" / "prepared.jsonl"
    argv = ["prepare-data", "--in", str(data), "--out", str(out), "--no-decontaminate"]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    at = printed.index(
        f"  {data}: read 4, wrote 1, skipped (expected a string: 2, invalid JSON: 1), "
        "contaminated 0"
    )
    assert printed[at + 1 : at + 3] == [
        f"    e.g. {data}:2:answer: expected a string, got null",
        f"    e.g. {data}:3:<json>: invalid JSON: Expecting property name enclosed in double "
        "quotes (col 2)",
    ]
