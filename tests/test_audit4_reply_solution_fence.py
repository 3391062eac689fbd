"""build-data with a real chat model (SmolLM2-135M-Instruct): its reply gave the solution in one
python fence, then "You can use this function like this:" and a second fence calling it. The
last fence was taken for the code, so the call ran alone (NameError) and the final answer,
split the same way, was the call: 'final answers pass 0/1' for a correct solution. The code is
now the last python fence that defines a function or class."""

from __future__ import annotations

from reflectioncoder.construct.backend import split_reply

SOLUTION = "def add_one(x):\n    return x + 1\n"


def test_a_usage_fence_after_the_solution_is_not_the_code():
    reply = (
        "Here's a Python function that adds 1 to a given number:\n\n"
        f"```python\n{SOLUTION}```\n\nYou can use this function like this:\n"
        "```python\nprint(add_one(5))  # Output: 6\n```"
    )
    draft = split_reply(reply)
    assert draft.code == SOLUTION
    assert draft.text == "Here's a Python function that adds 1 to a given number:"


def test_a_later_fix_still_wins_over_an_earlier_definition():
    fixed = "def add_one(x):\n    return 1 + x\n"
    reply = f"Before:\n```python\n{SOLUTION}```\nFixed:\n```python\n{fixed}```\n"
    reply += "Call:\n```python\nadd_one(1)\n```"
    assert split_reply(reply).code == fixed


def test_without_any_definition_the_last_fence_is_the_code():
    reply = "```python\nx = 1\n```\nthen\n```python\nprint(x + 1)\n```"
    assert split_reply(reply).code == "print(x + 1)\n"
