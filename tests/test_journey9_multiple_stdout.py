"""A MultiPL-E sample that fails says why in the result: tools that report on stdout (tsc's
`error TS1005: '}' expected.`, a test framework's failure lines) left the details row with
`reason: exit code 2` and an empty `stderr_tail`. The row now keeps the stdout's tail of a run
that did not pass (empty for a pass: nothing of a passing run's output is kept)."""

from __future__ import annotations

import json

import pytest

from reflectioncoder.cli import main
from reflectioncoder.eval.multiple_languages import toolchain_problem


@pytest.mark.skipif(toolchain_problem("ts") is not None, reason="tsc and node not installed")
def test_a_typescript_build_error_is_in_the_result(tmp_path, shared_dir, capsys):
    samples = tmp_path / "ts.jsonl"
    rows = [  # MultiPL-E's TypeScript completions close the function: the first forgets it
        {"task_id": "HumanEval_23_strlen", "completion": "  return string.length;\n"},
        {"task_id": "HumanEval_23_strlen", "completion": "  return string.length;\n}\n"},
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.json"
    argv = ["evaluate", "--task", "multiple-ts", "--samples", str(samples), "--limit", "1"]
    code = main([*argv, "--data-dir", str(shared_dir / "evaldata"), "--json", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    failed, passed = json.loads(out.read_text())["details"]["HumanEval_23_strlen"]
    assert failed["status"] == "fail" and failed["stderr_tail"] == ""
    assert "error TS1005: '}' expected." in failed["stdout_tail"]
    assert (passed["status"], passed["stdout_tail"]) == ("pass", "")
