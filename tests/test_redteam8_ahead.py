"""Red team, round 8: a Python solution too slow for one input, that does that input's work
while the scorer times an earlier one.

Each input's limit is checked outside, on the run's CPU clock, from one result line to the
next. A phase's inputs reach the box together, as one line, once its program has loaded (so
nothing is computed while it loads), and the runner holds them in a local list that the
program's own frame can reach (``sys._getframe(1).f_locals``): a solution knows, at every
call, which inputs come next. One that needs 1.5 CPU seconds for its last input (a limit of
1 s) fails when it spends them there, and passes when it spends them during the calls before,
each under its own limit. EvalPlus 0.3.1 behaves the same (its inputs are in the same
process, each call timed alone). Closing it would take one input per round trip (the scorer
sending input i + 1 only once it has read row i): some 50,000 round trips over HumanEval(+)
and MBPP(+), against issue 24's speed target; left, and stated in docs/evaluation.md. The
total stays bounded: every input's CPU counts against some input's limit, and the phase's
budget against the sum.
"""

from __future__ import annotations

import pytest
import test_sandbox_hostile
from test_sandbox_hostile import _judge, _task

from reflectioncoder.eval.score import PASS, TIMEOUT

level = test_sandbox_hostile.level  # the fixture: each level the machine offers

BURN = (
    "def _burn(seconds):\n"
    "    import time\n"
    "    end = time.process_time() + seconds\n"
    "    while time.process_time() < end:\n"
    "        pass\n"
)
# 1.5 CPU seconds for the input {slow}, spent when it is called
SLOW = BURN + ("def f(x):\n    if x == {slow}:\n        _burn(1.5)\n    return x * {k} + {c}\n")
# the same 1.5 s for {slow}, spent at the calls before it: 0.8 s at the one just before, the
# rest when its own turn comes
AHEAD = BURN + (
    "def f(x):\n"
    "    import sys\n"
    "    runner = sys._getframe(1).f_locals\n"
    "    inputs, i = runner.get('inputs') or [], runner.get('i', 0)\n"
    "    if i + 1 < len(inputs) and inputs[i + 1][0] == {slow}:\n"
    "        _burn(0.8)\n"
    "    if x == {slow}:\n"
    "        _burn(0.7)\n"
    "    return x * {k} + {c}\n"
)


def _program(template: str, seed: int) -> str:
    task, _ = _task(seed)
    k, c = 2 + seed % 5, seed % 7  # as _task makes them
    slow = task.plus_inputs[-1][0]
    return template.replace("{slow}", str(slow)).replace("{k}", str(k)).replace("{c}", str(c))


@pytest.mark.slow  # four sandboxed scorings, 1.5 s of CPU burnt in each
def test_work_done_ahead_passes_where_done_in_turn_times_out(level):
    seed = 5
    in_turn = _judge(level, seed, _program(SLOW, seed))
    assert in_turn.plus == TIMEOUT, in_turn.reason
    ahead = _judge(level, seed, _program(AHEAD, seed))
    assert ahead.base == PASS and ahead.plus == PASS, ahead.reason  # the limit, stated
