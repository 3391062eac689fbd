"""MBPP's set-equality tasks (EvalPlus 0.3.1 compares ``set(out) == set(expected)``): a completion
returning any iterable of the right elements passes there, so here too. The box lists such an
output for those tasks only (under the input's time limit); elsewhere a generator stays not
plain data and fails, as EvalPlus's ``==`` fails it."""

from __future__ import annotations

import pytest

from reflectioncoder.eval.score import check_sample
from reflectioncoder.eval.tasks import PythonTask

CANONICAL = "def {name}(text):\n    return [w for w in text.split() if len(w) >= 4]\n"
INPUTS = [["Please move back to stream"], ["Jing Eco and Tech"]]
EXPECTED = [["Please", "move", "back", "stream"], ["Jing", "Tech"]]


def _verdict(entry_point: str, returns: str) -> tuple[str, str]:
    """Mbpp/7's find_char_long (a set-equality task) or a plain-list task of the same code,
    its words returned as ``returns`` (of the list ``r``)."""
    task = PythonTask("Mbpp/7", "", entry_point, "", INPUTS[:1], INPUTS[1:], 0.0, "mbpp")
    solution = (
        "import collections, itertools\n"
        + CANONICAL.format(name="_right")
        + f"def {entry_point}(text):\n    r = _right(text)\n    return {returns}\n"
    )
    expected = {
        "base": {"out": EXPECTED[:1], "t": [0.001]},
        "plus": {"out": EXPECTED[1:], "t": [0.001]},
    }
    got = check_sample(task, solution, expected)
    return got.base, got.plus or got.reason


@pytest.mark.parametrize(
    "returns",
    ["(w for w in r)", "collections.deque(r)", "reversed(r)", "dict.fromkeys(r).keys()", "r"],
)
def test_any_iterable_of_the_right_elements_passes(returns):
    assert _verdict("find_char_long", returns) == ("pass", "pass")


@pytest.mark.parametrize(
    "returns", ["(w.upper() for w in r)", "collections.deque(r[1:])", "iter(r + ['x'])", "3"]
)
def test_wrong_elements_fail(returns):
    assert _verdict("find_char_long", returns)[0] == "fail"


@pytest.mark.parametrize(
    ("returns", "want"),
    [  # a slow one meets the input's time limit (1 s); a fast one the element cap first
        (
            "(w for w in itertools.cycle(r) if sum(range(10**5)) >= 0)",
            ("timeout", "TimeoutException"),
        ),
        ("itertools.cycle(r)", ("fail", "OutputTooLong")),
    ],
)
def test_an_endless_iterable_ends_within_the_limits(returns, want):
    assert _verdict("find_char_long", returns) == want


def test_a_plain_list_task_still_refuses_a_generator():
    assert _verdict("long_words", "r") == ("pass", "pass")
    assert _verdict("long_words", "(w for w in r)")[0] == "fail"
