"""Red team, round 7: MultiPL-E forgeries in the languages docs/evaluation.md's table left "not
tested" (bash and Java redefining the checks). MultiPL-E's tests are compiled into the same
program as the completion, so a completion that changes what a check means passes wrong: the
scorer can only make the evidence of a finished run (the nonce) hard to fake, and these reach
the nonce's statement honestly, by making every failed check pass. MultiPL-E's own limit, as
the other languages' rows; each completion below is wrong (it answers 0 or an empty list).
"""

from __future__ import annotations

import pytest
import test_multiple_forging

from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval.tasks import load_multiple

FORGERIES = {
    # the tests run under `set -e`: a DEBUG trap turns it off again before every command, so
    # a failed `[[ ... ]]` no longer ends the script (closed on its own line: no "\n}" stop)
    "sh:debug-trap": (
        "HumanEval_53_add",
        "    echo 0; }\ntrap 'set +e' DEBUG\nrc_unused() {\n    :\n",
    ),
    # or a function named `set` (bash allows it outside POSIX mode): `set -e` does nothing
    "sh:set-function": ("HumanEval_53_add", "    echo 0; }\nset() { :; }\nrc_unused() {\n    :\n"),
    # assert(f(...).equals(expected)): an ArrayList whose equals says yes to everything
    "java:equals": (
        "HumanEval_14_all_prefixes",
        "        return new ArrayList<String>() {\n"
        "            public boolean equals(Object other) { return true; }\n"
        "        };\n",
    ),
}
HONEST_WRONG = {"sh": "    echo 0\n", "java": "        return new ArrayList<String>();\n"}


def _score(attack: str, completion: str, shared_dir) -> ml.MultiplEResult:
    language = attack.partition(":")[0]
    problem = ml.toolchain_problem(language)
    if problem:
        pytest.skip(problem)
    tasks = load_multiple(shared_dir / "evaldata", language)
    sample = {"task_id": FORGERIES[attack][0], "completion": completion}
    return ml.score_multiple_samples(tasks, [sample], parallel=1, timeout_s=10)[0]


# round 9: Java's `A.equals(B)` asserts are judged by the expected value's own equals
# (``multiple_languages.java_expected_first``): the rigged ArrayList fails
HOLDS = {"java:equals"}


@pytest.mark.parametrize("attack", sorted(FORGERIES))
def test_changed_checks(attack, shared_dir):
    """The same wrong answer fails without the change (so a pass is the change's doing)."""
    wrong = _score(attack, HONEST_WRONG[attack.partition(":")[0]], shared_dir)
    assert wrong.status == "fail", (attack, wrong.reason, wrong.stderr_tail)
    forged = _score(attack, FORGERIES[attack][1], shared_dir)
    want = "fail" if attack in HOLDS else "pass"
    assert forged.status == want, (attack, forged.reason, forged.stderr_tail)


assert test_multiple_forging.TASK == "HumanEval_53_add"  # the task the table's rows use
