"""A chat model often follows its solution with the tests it would run ("You can test it
with:" and a fence of ``def test_...`` functions or a ``unittest.TestCase``). That fence
defines functions too, so build-data took the tests for the code (the last fence that
defines a function or class): the solution was never run. A fence whose definitions are all
tests is not the solution; a later fence that fixes the solution still wins."""

from __future__ import annotations

import pytest

from reflectioncoder.construct.backend import split_reply

SOLUTION = "def add_one(x):\n    return x + 1\n"
TESTS = {
    "pytest": "def test_add_one():\n    assert add_one(1) == 2\n",
    "unittest": (
        "import unittest\n\nclass TestAddOne(unittest.TestCase):\n"
        "    def test_one(self):\n        self.assertEqual(add_one(1), 2)\n"
    ),
    "unittest base only": (
        "from unittest import TestCase\n\nclass AddOneChecks(TestCase):\n"
        "    def test_one(self):\n        self.assertEqual(add_one(1), 2)\n"
    ),
}


@pytest.mark.parametrize("kind", sorted(TESTS))
def test_a_test_fence_after_the_solution_is_not_the_code(kind):
    reply = (
        f"Here is the function:\n```python\n{SOLUTION}```\n"
        f"You can test it with:\n```python\n{TESTS[kind]}```\n"
    )
    assert split_reply(reply).code == SOLUTION


def test_a_solution_whose_helper_is_named_like_a_test_prefix_is_still_code():
    solution = "def tested(x):\n    return x\n\ndef testify(x):\n    return tested(x)\n"
    reply = f"```python\n{SOLUTION}```\nBetter:\n```python\n{solution}```\n"
    assert split_reply(reply).code == solution
