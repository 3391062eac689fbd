"""``build-data --n N`` (the template problems) with a model backend (``--backend openai`` or
``transformers``), as ``--problems`` already does: a model's first answer that passes is a
sample with 0 rounds, and a reply without code costs that problem only.

Before, a passing first answer was redrawn 6 times (a greedy model repeats it), so a model that
solved the problems made 96 chat calls and 38 s of runs for nothing, then "made only 0 of 2";
and one reply without a python fence ended the whole build with a ValueError."""

from __future__ import annotations

import pytest

from reflectioncoder.construct.backend import ChatBackend
from reflectioncoder.construct.build import build_dataset
from reflectioncoder.construct.problems import generate_problems


class _Model(ChatBackend):
    """A scripted chat model: the problem's reference, or no code for the ones in ``mute``."""

    name = "scripted"

    def __init__(self, seed: int, mute: set[str] = frozenset()) -> None:
        self.by_instruction = {p.instruction(): p for p in generate_problems(seed)}
        self.mute, self.calls = mute, 0

    def _chat(self, messages: list[dict]) -> str:
        self.calls += 1
        problem = self.by_instruction[messages[1]["content"]]
        if problem.task_id in self.mute:
            return "I cannot solve this one."
        return f"Here it is:\n```python\n{problem.solution}\n```"


def test_a_passing_first_answer_is_a_sample_with_no_rounds(seed: int) -> None:
    model = _Model(seed)
    samples, stats = build_dataset(3, seed, backend=model, generation_fraction=0)
    assert len(samples) == 3 and stats.rounds == {0: 3}
    assert all(s["construct"]["final_passed"] for s in samples)
    assert model.calls == 2 * 3  # one attempt and one answer each, nothing redrawn
    for s in samples:
        body = s["messages"][1]["content"]
        assert [b["type"] for b in body] == ["text", "code", "execution"]
        assert body[2]["content"] == "All tests passed."


def test_a_reply_without_code_costs_its_problem_only(seed: int) -> None:
    problems = generate_problems(seed)
    model = _Model(seed, mute={problems[0].task_id})
    samples, stats = build_dataset(3, seed, backend=model, generation_fraction=0)
    assert len(samples) == 3
    assert problems[0].task_id not in {s["task_id"] for s in samples}
    assert stats.rejected["reply: no python code fence"] >= 1


def test_a_model_that_never_writes_code_says_why(seed: int) -> None:
    mute = {p.task_id for p in generate_problems(seed)}
    with pytest.raises(RuntimeError, match="no python code fence"):
        build_dataset(1, seed, backend=_Model(seed, mute), generation_fraction=0)
