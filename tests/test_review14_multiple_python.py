"""MultiPL-E Python runs the tests once, as MultiPL-E's evaluator does (``prompt + completion
+ "\\n" + tests``). The data's tests end with ``check(f)``, and the scorer appended a second
call: every sample ran its tests twice (twice the time under the same limit), and a completion
whose state carries over from call to call failed where MultiPL-E passes it."""

from __future__ import annotations

import re

from reflectioncoder.eval.multiple import program_text, score_multiple_samples
from reflectioncoder.eval.tasks import MultiplETask, load_multiple

_TOP_LEVEL_CHECK = re.compile(r"^(check\(\w+\)|test_check\(\))", re.MULTILINE)


def test_every_python_program_checks_once(shared_dir) -> None:
    tasks = load_multiple(shared_dir / "evaldata", "python")
    for task in tasks.values():
        program = program_text(task, "    pass", nonce="rc-done-x")
        assert len(_TOP_LEVEL_CHECK.findall(program)) == 1, task.task_id
    bare = MultiplETask("t", "python", "def f(x):\n", "def check(candidate):\n    pass\n", [])
    assert _TOP_LEVEL_CHECK.findall(program_text(bare, "    return x")) == ["check(f)"]


def test_state_kept_between_calls_is_scored_as_multipl_e_scores_it(shared_dir) -> None:
    tasks = load_multiple(shared_dir / "evaldata", "python")
    tid = next(iter(tasks))
    task = tasks[tid]  # has_close_elements: 7 asserts in its check
    calls = task.tests.count("assert ")
    completion = (
        "    global _calls\n"
        '    _calls = globals().get("_calls", 0) + 1\n'
        f"    if _calls > {calls}:  # right on the data's own check run, wrong after it\n"
        "        return None\n"
        "    return any(abs(a - b) < threshold\n"
        "               for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)\n"
    )
    (result,) = score_multiple_samples(tasks, [{"task_id": tid, "completion": completion}])
    assert result.status == "pass", (result.reason, result.stderr_tail)
