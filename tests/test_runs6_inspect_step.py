"""``reflectioncoder inspect --step N`` with N past the run's steps (``--total-steps``) drew masks
at a rate over 1, a step no run has, without a word: it is refused in one line, exit 2, before
the tokenizer loads. Step S of N runs 0..N-1 (the mask rate is (S + 1) / N)."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main

DATA = "tests/data/reflection_small.jsonl"


@pytest.mark.parametrize(("step", "total"), [(20, 10), (10, 10), (3, 1)])
def test_a_step_past_the_runs_steps_is_one_line(capsys, tmp_path, step, total):
    argv = ["inspect", "--data", DATA, "--tokenizer", str(tmp_path / "no-tokenizer"),
            "--step", str(step), "--total-steps", str(total)]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"reflectioncoder inspect: --step: step {step} is past the run's {total} step(s) "
        f"(--total-steps {total}: steps 0-{total - 1}); give the run's --total-steps"
    ]


def test_the_last_step_is_a_step(capsys, tmp_path):
    """Step N-1 passes the check: the next error is the (missing) tokenizer's."""
    argv = ["inspect", "--data", DATA, "--tokenizer", str(tmp_path / "no-tokenizer"),
            "--step", "9", "--total-steps", "10"]  # fmt: skip
    assert main(argv) == 1
    assert "--tokenizer" in capsys.readouterr().err
