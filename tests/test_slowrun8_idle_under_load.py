"""A run starved of CPU is not idle. tests/test_eval_score.py's CL-34B reproduction failed
twice at load ~15 on 2 cores (passed at ~9): a step past ``2 x limit + 1`` s of wall with under
``IDLE_SHARE`` of it in CPU was "waiting, not computing", but at that load an honest sample gets
about that share of a core. A run that computes under a CPU quota of 2% (as starved as a run can
be, and without needing a loaded machine) waits runnable: the judge and the sandbox's own idle
rule let it go on, and still stop a run that sleeps."""

from __future__ import annotations

import sys
import time

import pytest

from reflectioncoder.eval.judge import Judge, Phase
from reflectioncoder.eval.sandbox import PreparedRun, run_sandboxed
from reflectioncoder.eval.sandbox.cgroup import cgroup_layout
from reflectioncoder.eval.tasks import PythonTask

BUSY = "import time\nwhile time.process_time() < {}: pass\nprint('done')\n"
SLEEP = "import time\ntime.sleep(60)\n"

pytestmark = pytest.mark.skipif(
    not {"cpu", "cputime"} <= set(cgroup_layout().parents), reason="needs a cgroup CPU quota"
)


def _judge_of(box: PreparedRun, far_wall: list[float]) -> tuple[Judge, Phase]:
    """A judge whose step began ``far_wall`` seconds ago (the wall clock it reads), on the run's
    real CPU clock and idle window."""
    task = PythonTask("Starved/0", "", "f", "", [[1]], [[2]], 0.0, "humaneval")
    phase = Phase("base", task, [[1]], {"out": [2], "t": [0.0]})
    phase.loaded = True
    judge = Judge([phase], box.cpu_time_s, 1 << 20, box.idle_window())
    judge.step = (judge.step[0] - far_wall[0], judge.step[1])
    return judge, phase


def _asked_for(judge: Judge, seconds: float) -> bool:
    """The scorer's thread asking the watchdog every 50 ms."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        judge.seen = time.monotonic()  # the scorer was not held up
        if judge.stalled():
            return True
        time.sleep(0.05)
    return False


def test_the_judge_tells_a_starved_step_from_a_waiting_one():
    starved = PreparedRun([sys.executable, "-c", BUSY.format(60)], cpu_cores=0.02)
    try:
        judge, phase = _judge_of(starved, [10.0])  # 10 s into a 1 s step, little CPU in it
        assert not _asked_for(judge, 1.5), phase.reason
    finally:
        starved.discard()
    sleeper = PreparedRun([sys.executable, "-c", SLEEP])
    try:
        time.sleep(0.5)  # asleep by now
        judge, phase = _judge_of(sleeper, [10.0])
        assert _asked_for(judge, 3.0)
        assert phase.reason == "waiting, not computing, past its time limit"
    finally:
        sleeper.discard()


def test_the_sandbox_lets_a_starved_run_finish():
    # 0.05 s of CPU at 2% of a core: ~3 s of wall with its start, past the idle rule's 2 s
    res = run_sandboxed(
        [sys.executable, "-c", BUSY.format(0.05)], timeout_s=30, cpu_s=0.5, cpu_cores=0.02
    )
    assert res.exit_code == 0 and res.stdout == "done\n", (res.ending, res.duration_s)
    assert res.duration_s > 2.0  # the rule had its say
