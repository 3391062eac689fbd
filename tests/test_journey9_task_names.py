"""A benchmark or MultiPL-E language named as people say it (``HumanEval``, ``rust``, ``c++``,
``python3``) is answered with the name the command takes: the line listed every name, and a
user had to see that Rust is ``rs`` and C++ ``cpp`` among nineteen."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main

KNOWN = "python, cpp, cs, d, go, java, jl, js, lua, php, pl, r, rb, rkt, rs, scala, sh, swift, ts"
SAID = {
    "humaneva": "--task: expected one of humaneval, mbpp, multiple, multiple-LANG, got 'humaneva' "
    "(did you mean humaneval?)",
    "HumanEval": "--task: expected one of humaneval, mbpp, multiple, multiple-LANG, got "
    "'HumanEval' (did you mean humaneval?)",
    "multiple-rust": f"--task: no MultiPL-E language 'rust' (did you mean rs for rust?); LANG is "
    f"one of {KNOWN}",
    "multiple-python3": "--task: no MultiPL-E language 'python3' (did you mean python for "
    f"python3?); LANG is one of {KNOWN}",
    "multiple-xyz": f"--task: no MultiPL-E language 'xyz'; LANG is one of {KNOWN}",
}


@pytest.mark.parametrize("task", sorted(SAID))
def test_a_task_named_as_people_say_it(tmp_path, capsys, task):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n')
    assert main(["evaluate", "--task", task, "--samples", str(samples)]) == 2
    assert capsys.readouterr().err == f"reflectioncoder evaluate: {SAID[task]}\n"


def test_languages_named_as_people_say_them(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval_0_x", "completion": "", "language": "rs"}\n')
    argv = ["evaluate", "--task", "multiple", "--languages", "rust", "C++", "--samples"]
    assert main([*argv, str(samples)]) == 2
    assert capsys.readouterr().err == (
        "reflectioncoder evaluate: --languages: no MultiPL-E runner or data for rust C++ (did you "
        "mean rs for rust, cpp for C++?)\n"
    )
    assert main(["eval-setup", "--languages", "javascript", "ts", "--print"]) == 2
    assert capsys.readouterr().err == (
        "reflectioncoder eval-setup: --languages: unknown javascript (did you mean js for "
        f"javascript?) (known: {KNOWN.replace(',', '')})\n"
    )
