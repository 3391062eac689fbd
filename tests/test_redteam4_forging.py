"""Red team, round 4: forging a Go verdict without reading the nonce. Go's prompt imports
only ``testing`` and ``fmt``, so a completion can neither read its binary nor call
``os.Exit``; the nonce sat in the source, printed at the end of the test function. But
``testing`` itself exits: ``testing.Main`` runs the tests it is given and calls ``os.Exit``
with their result, 0 when there are none. A wrong completion that declared ``TestMain``
(which ``go test`` calls instead of running the tests) ran the real tests (their failures
printed, then the nonce) and then exited 0 through an empty ``testing.Main``: a pass. Now the
tests end with the scorer's own ``TestMain``, which prints the nonce only when ``m.Run()``
reports every test passed; a completion that declares another one does not compile, and one
that exits 0 early never prints the nonce.

What no nonce can stop, MultiPL-E's own limit (shown here so docs/evaluation.md stays true): the
tests are code of the same program, so a completion can read the values they expect (JS from
``__filename``, C++ from ``__FILE__`` at run time) and answer each call with them.
"""

from __future__ import annotations

import pytest

from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval.tasks import load_multiple

# a wrong `add` (HumanEval_53: x * y), then code after the function, as a completion may write
_EXIT_ZERO = "testing.Main(func(string, string) (bool, error) { return true, nil }, nil, nil, nil)"
FORGERIES = {
    # the tests run (the nonce printed), then an empty test run exits 0
    "own-testmain": (
        "    return x * y\n}\n\nfunc TestMain(m *testing.M) {\n    m.Run()\n"
        f"    {_EXIT_ZERO}\n}}\n"
    ),
    # exits 0 at once, from the first call (before any nonce)
    "exit-in-the-function": f"    {_EXIT_ZERO}\n    return x * y\n}}\n",
}


def _score(completion: str, shared_dir, language: str = "go") -> ml.MultiplEResult:
    problem = ml.toolchain_problem(language)
    if problem:
        pytest.skip(problem)
    tasks = load_multiple(shared_dir / "evaldata", language)
    sample = {"task_id": "HumanEval_53_add", "completion": completion}
    return ml.score_multiple_samples(tasks, [sample], parallel=1, timeout_s=10)[0]


@pytest.mark.parametrize("attack", sorted(FORGERIES))
def test_go_forgeries_fail(attack, shared_dir):
    res = _score(FORGERIES[attack], shared_dir)
    assert res.status == "fail", (res.reason, res.stderr_tail)


def test_a_right_go_completion_passes(shared_dir):
    """The scorer's TestMain leaves an honest completion its pass."""
    res = _score("    return x + y\n}\n", shared_dir)
    assert res.status == "pass", (res.reason, res.stderr_tail)


# An `add` that never adds: it reads the tests (part of the same program) and answers each
# call with the value its assertion expects.
ANSWERS_FROM_THE_TESTS = {
    "js": (
        '  const s = require("fs").readFileSync(__filename, "utf8");\n'
        "  for (const m of s.matchAll(/candidate\\((-?\\d+), (-?\\d+)\\),(-?\\d+)\\)/g))\n"
        "    if (+m[1] === x && +m[2] === y) return +m[3];\n"
        "  return 0;\n}\n"
    ),
    "cpp": r"""    std::ifstream f(__FILE__);
    std::stringstream all;
    all << f.rdbuf();
    std::string s = all.str();
    std::regex re(R"(candidate\(\((-?\d+)\), \((-?\d+)\)\) == \((-?\d+)\))");
    for (std::sregex_iterator i(s.begin(), s.end(), re), e; i != e; ++i)
        if (std::stol((*i)[1]) == x && std::stol((*i)[2]) == y)
            return std::stol((*i)[3]);
    return 0;
""",
}


@pytest.mark.parametrize("language", sorted(ANSWERS_FROM_THE_TESTS))
def test_answering_from_the_tests_passes(language, shared_dir):
    """MultiPL-E's own limit, stated in docs/evaluation.md: the tests are code of the same
    program, so a completion can read their expected values (an interpreter needs the source;
    a compiled program finds it at ``__FILE__``) instead of computing them."""
    res = _score(ANSWERS_FROM_THE_TESTS[language], shared_dir, language)
    assert res.status == "pass", (res.reason, res.stderr_tail)
