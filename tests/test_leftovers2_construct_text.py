"""build-data: a model reply that opens with its code (no text before the fence) makes no text
block in the built sample. Before, every turn wrote ``{"type": "text", "content": ""}``, which
serialises to an empty ``<|text|><|endofblock|>`` the model was then trained to write."""

from __future__ import annotations

import random

from reference.construct import structure_errors

from reflectioncoder.construct.backend import split_reply
from reflectioncoder.construct.build import reflection_sample
from reflectioncoder.construct.problems import generate_problems
from reflectioncoder.data.schema import parse_sample
from reflectioncoder.data.tokenize import serialise


class _Replies:
    """A chat model's replies, split as the model backends split them (``split_reply``)."""

    name = "replies"

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)

    def attempt(self, problem, rng):
        return split_reply(self.replies.pop(0))

    def reflect(self, problem, history, rng):
        return split_reply(self.replies.pop(0))


def test_a_reply_with_no_text_makes_no_text_block() -> None:
    problem = generate_problems(0)[0]
    broken = problem.solution.replace(":\n", ":\n    raise ValueError('bug')\n", 1)
    backend = _Replies(
        [
            f"```python\n{broken}\n```",  # the first attempt: code alone
            f"The ValueError is mine; without it:\n```python\n{problem.solution}\n```",
        ]
    )
    sample = reflection_sample(problem, backend, random.Random(0), max_attempts=1)
    assert sample is not None and structure_errors(sample) == []
    body = sample["messages"][1]["content"]
    assert [b["type"] for b in body] == ["code", "execution", "text", "code", "execution"]
    assert body[2]["content"] == "The ValueError is mine; without it:"
    assert all(b["content"].strip() for b in body if b["type"] == "text")
    text = serialise(parse_sample(sample, "built"))
    assert "<|text|><|endofblock|>" not in text
    assert text.count("<|text|>") == 4  # instruction x2, the reflection's one, the answer
