"""MultiPL-E from a samples file, as a user scores one. A sample that fails says why in the
result: tools that report on stdout (tsc's `error TS1005: '}' expected.`) left the details row
with `reason: exit code 2` and an empty `stderr_tail`; the row now keeps the stdout's tail of a
run that did not pass (empty for a pass). A row of another language than --task's is refused."""

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


def test_a_row_of_another_language_is_refused(tmp_path, shared_dir, capsys):
    """MultiPL-E's task ids are the same in every language: `--task multiple-cs` on a file of
    several languages ran its Java and Go rows as C# (18 samples, pass@1 5.6, exit 0). A row
    that names another language is refused, naming its line; one naming cs (or none) scores."""
    samples = tmp_path / "mixed.jsonl"
    rows = [
        {"language": "cs", "task_id": "HumanEval_23_strlen", "completion": "  return 0;\n"},
        {"language": "java", "task_id": "HumanEval_23_strlen", "completion": "  return 0;\n"},
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["evaluate", "--task", "multiple-cs", "--samples", str(samples), "--limit", "1"]
    code = main([*argv, "--data-dir", str(shared_dir / "evaldata"), "--no-progress"])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        f'reflectioncoder evaluate: {samples}:2: language: "java" is not --task multiple-cs\'s '
        "language (cs); a file of several languages is scored with --task multiple "
        "(--languages LANG for some of them)"
    )
