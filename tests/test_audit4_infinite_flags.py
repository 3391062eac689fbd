"""A flag given inf or nan where a finite number is meant is one line naming it, exit 2, nothing
written: `build-data --timeout inf` ended in an internal OverflowError, and `evaluate
--temperature inf` (or nan) sampled, scored and wrote the scores into the model's card."""

from __future__ import annotations

import json

import pytest
from test_cli_errors import _one_line_error
from test_journey5_bad_input import PROBLEM


@pytest.mark.parametrize(
    "extra", [["--timeout", "inf"], ["--request-timeout", "inf"], ["--timeout", "nan"]]
)
def test_build_data_refuses_seconds_that_are_not_finite(extra, tmp_path, capfd):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    out = tmp_path / "out"
    argv = ["build-data", "--problems", str(problems), "--out", str(out / "d.jsonl"), *extra]
    _one_line_error(capfd, argv, 2, out, extra[0], "finite seconds > 0", f"got {extra[1]}")


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_evaluate_refuses_a_temperature_that_is_not_finite(value, tmp_path, capfd):
    model = tmp_path / "model"
    model.mkdir()
    argv = ["evaluate", "--task", "humaneval", "--model", str(model), "--temperature", value,
            "--json", str(tmp_path / "out" / "r.json")]  # fmt: skip
    _one_line_error(capfd, argv, 2, tmp_path / "out", "--temperature", "finite", f"got {value}")
