"""A chat model's reply -> the code build-data runs (``construct.backend.split_reply``).

The fence regex paired a shell block's closing fence with the next opening (the code became
the text between them), took an output block written after the code for the code, and found no
fence at all in a reply with CRLF line endings."""

from __future__ import annotations

import random

import pytest

from reflectioncoder.construct.backend import ChatBackend, split_reply
from reflectioncoder.construct.build import reflection_sample
from reflectioncoder.construct.problems import generate_problems

CODE = "def f(x):\n    return x + 1\n"


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        (
            f"Install it:\n```bash\npip install x\n```\nThe code:\n```python\n{CODE}```\n",
            "The code:",
        ),
        (f"Here:\n```python\n{CODE}```\nIt prints:\n```\n2\n```\n", "Here:"),
        (f"Here:\n```output\n2\n```\n```python\n{CODE}```", "```output\n2\n```"),
        ("Here:\r\n```python\r\n" + CODE.replace("\n", "\r\n") + "```\r\n", "Here:"),
        (f"Untagged:\n```\n{CODE}```", "Untagged:"),
        (f"```python\n{CODE.rstrip()}```\nDone.", ""),  # closed at the end of a code line
    ],
)
def test_the_python_fence_is_the_code(reply: str, text: str) -> None:
    draft = split_reply(reply)
    assert draft.code == CODE
    assert draft.text.endswith(text)


def test_no_python_fence_is_refused() -> None:
    with pytest.raises(ValueError, match="no python code fence"):
        split_reply("Run:\n```bash\nls\n```\n")


class _Scripted(ChatBackend):
    def __init__(self, replies: list[str]) -> None:
        self.replies = replies

    def _chat(self, messages: list[dict]) -> str:
        return self.replies.pop(0)


def test_a_reply_with_an_output_block_builds_a_passing_sample(seed: int) -> None:
    """The user's path: build-data with a model that shows the expected output after its code;
    the reflection sequence runs the model's code, not the output block."""
    problem = random.Random(seed).choice(generate_problems(seed))
    shown = "```\nAll tests passed.\n```"
    replies = [f"My solution:\n```python\n{problem.solution}\n```\nIt should print:\n{shown}"] * 2
    sample = reflection_sample(
        problem, _Scripted(replies), random.Random(seed), max_attempts=1, redraw_passing=False
    )
    assert sample is not None and sample["construct"]["final_passed"]
    code = sample["messages"][1]["content"][1]["content"]
    assert code.startswith(problem.solution.strip())
