"""Red team, round 9: MultiPL-E forgeries in the languages installed here for the first time
(Lua, Perl, Ruby, R, Racket, Scala, D: every attack of the earlier rounds now runs).

Ruby: test-unit goes on to the next case after a failed one, so the scorer's last case (which
prints the nonce) ran after a failure too, and the exit status alone told the verdict: a wrong
``add`` that registers ``at_exit { exit!(0) }`` (or ``exit(0)``: the handlers run after
test-unit's, LIFO) passed without reading descriptor 3. Now the nonce case prints only when
test-unit's result so far has passed (as Lua's prints only when luaunit reports no failure).
A completion that redefines ``assert_equal`` still passes: MultiPL-E's own limit, as in the
other languages' rows of docs/evaluation.md's table.
"""

from __future__ import annotations

import pytest
from test_multiple_forging import _score

RB_EXITS = {
    "at_exit exit!(0)": "  at_exit { $stdout.flush; exit!(0) }\n  x * y\nend\n",
    "at_exit exit(0)": "  at_exit { exit(0) }\n  x * y\nend\n",
}
RB_REDEFINES = (
    "  x * y\nend\nrequire 'test/unit'\n"
    "module Test::Unit::Assertions\n  def assert_equal(*) end\nend\n"
)


@pytest.mark.parametrize("attack", sorted(RB_EXITS))
def test_ruby_exit_handlers_gain_nothing(attack, shared_dir):
    res = _score("rb", RB_EXITS[attack], shared_dir)
    assert res.status == "fail", (res.reason, res.stdout_tail)  # before: pass, exit 0


def test_ruby_redefining_assert_equal_forges_a_pass(shared_dir):
    """MultiPL-E's own limit, stated in the table."""
    res = _score("rb", RB_REDEFINES, shared_dir)
    assert res.status == "pass", (res.reason, res.stdout_tail, res.stderr_tail)
