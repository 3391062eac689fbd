"""``"scheduler": {"type": null}`` is a section DeepSpeed 0.19.8 takes: its parser hands the
type on and its engine builds no scheduler when the name is None (``_scheduler_from_config``).
The key-by-key check of the handed-on sections refused it ('None is not a scheduler
DeepSpeed builds'), stopping a launch DeepSpeed would have run."""

from __future__ import annotations

import pytest

from reflectioncoder.train.deepspeed_reads import deepspeed_json_problem

pytest.importorskip("deepspeed")


def test_a_null_scheduler_type_passes():
    assert deepspeed_json_problem({"scheduler": {"type": None}}) is None


def test_a_wrong_type_is_still_refused():
    problem = deepspeed_json_problem({"scheduler": {"type": "WarmupLr"}})
    assert problem is not None and problem[0] == ("scheduler", "type"), problem
