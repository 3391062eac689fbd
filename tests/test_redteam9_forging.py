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


# Round 9: the tests' checks are the scorer's own in C++, C#, JS/TS, Rust and Scala
# (``Language.checks``): a wrong ``add`` that takes the next step after redefining the check by
# its usual name (test_multiple_forging.REDEFINES, which now fail too) fails as well.
CHECKS_REDEFINED = {
    "cpp:ndebug": "    return x * y;\n}\n#define NDEBUG\n#undef assert\n"
    "#define assert(x) ((void)0)\nvoid rc_unused() {\n",
    "cpp:assert_fail": "    return x * y;\n}\n#define __assert_fail(...) ((void)0)\n"
    "void rc_unused() {\n",
    "js:require": "  return x * y;\n}\nrequire = () => ({ deepEqual() {} });\n",
    "js:patch": "  require('node:assert').deepEqual = () => {};\n  return x * y;\n}\n",
    "scala:predef": "        x * y\n    }\n"
    "    object Predef { def assert(ok: Boolean): Unit = () }\n"
    "    def rcUnused(): Long = {\n        0L\n",
}


@pytest.mark.parametrize(
    "attack",
    # scalac takes seconds a sample: Scala's case runs with the slow set
    [pytest.param(a, marks=pytest.mark.slow) if a.startswith("scala") else a
     for a in sorted(CHECKS_REDEFINED)],
)  # fmt: skip
def test_the_scorers_checks_hold(attack, shared_dir):
    res = _score(attack.partition(":")[0], CHECKS_REDEFINED[attack], shared_dir)
    assert res.status == "fail", (res.reason, res.stdout_tail, res.stderr_tail)


# Left (round 9, decided): where the language gives a completion the check itself, making the
# tests' call the scorer's gains nothing. Perl: a completion that marks Test::Deep loaded and
# defines eq_deeply (the tests' `use` then imports nothing); R: all.equal dispatches on the class
# of what the completion returns (base::all.equal too); Lua: luaunit raises a failure through
# the global `error`, which the completion may replace (taking assertEquals before it runs did
# not help). Each passes wrong: MultiPL-E's own limit.
LEFT = {
    "lua": "    return x * y\nend\nerror = function() end\n",
    "pl": "    return $x * $y;\n}\nBEGIN { $INC{'Test/Deep.pm'} = 1; }\nsub eq_deeply { 1 }\n",
    "r": "    structure(x * y, class = 'rcw')\n}\n"
    "all.equal.rcw <- function(target, current, ...) TRUE\n",
}


@pytest.mark.parametrize("language", sorted(LEFT))
def test_checks_the_language_hands_to_the_completion_forge_a_pass(language, shared_dir):
    res = _score(language, LEFT[language], shared_dir)
    assert res.status == "pass", (res.reason, res.stdout_tail, res.stderr_tail)


def test_java_asserts_ask_the_expected_value():
    """``assert(A.equals(B));`` is judged by ``B.equals(A)`` (B: what the tests built); any
    other shape is left as MultiPL-E wrote it."""
    from reflectioncoder.eval.multiple_languages import java_expected_first

    tests = (
        '    assert(f(("a)")).equals((new ArrayList<String>(Arrays.asList("b.equals(")))));\n'
        "    assert(g((1l)) == (2l));\n"
        "    assert(h(1).equals(x) && y);\n"
    )
    assert java_expected_first(tests).splitlines() == [
        '    assert(java.util.Objects.equals((new ArrayList<String>(Arrays.asList("b.equals("))),'
        ' f(("a)"))));',
        "    assert(g((1l)) == (2l));",
        "    assert(h(1).equals(x) && y);",
    ]
