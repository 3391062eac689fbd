"""``reflectioncoder evaluate --samples`` on a file of another benchmark, or with a stray task
id: one line naming the file, the line and the task id (was "no sample for 378 tasks", or
"samples:165" without the file), also under --limit."""

from __future__ import annotations

import json

import pytest

from reflectioncoder.cli import main

HUMANEVAL = {"task_id": "HumanEval/0", "completion": "    return True\n"}


@pytest.mark.parametrize("limit", [[], ["--limit", "2"]])
def test_a_humaneval_file_given_to_mbpp(tmp_path, capsys, limit):
    samples = tmp_path / "humaneval.jsonl"
    samples.write_text(json.dumps(HUMANEVAL) + "\n")
    assert main(["evaluate", "--task", "mbpp", "--samples", str(samples), *limit]) == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder evaluate: {samples}:1: task_id: 'HumanEval/0' is not a task of "
        "--task mbpp\n"
    )


def test_a_stray_task_id_is_named_with_its_file_and_line(tmp_path, capsys):
    samples = tmp_path / "mine.jsonl"
    rows = [{"task_id": f"HumanEval/{i}", "completion": "    pass\n"} for i in range(164)]
    rows.insert(7, {"task_id": "HumanEval/999", "completion": "    pass\n"})
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", "--task", "humaneval", "--samples", str(samples)]) == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder evaluate: {samples}:8: task_id: 'HumanEval/999' is not a task of "
        "--task humaneval\n"
    )


def test_a_samples_file_with_a_byte_order_mark_is_scored(tmp_path, capsys):
    samples = tmp_path / "windows.jsonl"  # saved by a Windows editor: a BOM, CRLF line ends
    samples.write_bytes(b"\xef\xbb\xbf" + (json.dumps(HUMANEVAL) + "\r\n").encode())
    result = tmp_path / "result.json"
    argv = ["evaluate", "--task", "humaneval", "--samples", str(samples), "--limit", "1"]
    assert main([*argv, "--json", str(result)]) == 0, capsys.readouterr().err
    assert "HumanEval/0" in result.read_text()
