"""Timing games against the Python scorer: a sample that waits instead of computing (sleep,
SIGSTOP on itself, refused since round 5, a sleep at module level, a byte now and then on the
result pipe, never a line) or that ignores the harness's timer is timed out
within seconds of its own limit, not at the wall-clock backstop of the whole sample's budget
(before: 50 s for this 3-input task, about 6 minutes for a HumanEval(+) task, against EvalPlus's
1 s). An honest input that is slower than the one before it still passes, while the scorer has
not yet seen the earlier input's line (the harness batches them)."""

from __future__ import annotations

import sys
import time

import pytest
from test_sandbox_hostile import _task

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.judge import IDLE_LOAD_S
from reflectioncoder.eval.score import FAIL, PASS, TIMEOUT, check_sample

# Before the watchdog, each of these took the task's wall backstop: wall_backstop(8 CPU s).
OLD_VERDICT_S = sandbox.wall_backstop(8.0)

# The runner's result pipe, as a hostile program finds it: the pipe it holds open for writing
RESULT_PIPE = (
    "import fcntl, os, stat\n"
    "def _result_pipe():\n"
    "    for fd in range(3, 64):\n"
    "        try:\n"
    "            writes = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY\n"
    "            if writes and stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
    "                return fd\n"
    "        except OSError:\n"
    "            pass\n"
)

STALLS = {
    "sleeps in the function": ("import time\ndef f(x):\n    time.sleep(1000)\n", 0, 6.0),
    "ignores the timer and spins": (
        "import signal\n"
        "def f(x):\n"
        "    signal.signal(signal.SIGPROF, signal.SIG_IGN)\n"
        "    while True:\n"
        "        pass\n",
        0,
        # a CPU-time limit: on 2 cores shared with 14 loads (CI under engineers) it took 5.0 s
        12.0,
    ),
    "drips bytes on the result pipe": (
        RESULT_PIPE + "import time\n"
        "def f(x):\n"
        "    pipe = _result_pipe()\n"
        "    while True:\n"
        "        os.write(pipe, b' ')\n"
        "        time.sleep(0.03)\n",
        0,
        6.0,
    ),
    "sleeps at load": (
        "import time\ntime.sleep(1000)\ndef f(x):\n    return x\n",
        None,
        IDLE_LOAD_S + 5.0,
    ),
}


# the load's idle floor is 10 s: that case runs with the slow set
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if "load" in n else n for n in STALLS]
)
def test_a_stalled_sample_is_timed_out_within_seconds(seed, name):
    code, failed_input, within_s = STALLS[name]
    task, expected = _task(seed)
    t0 = time.monotonic()
    res = check_sample(task, code, expected)
    took = time.monotonic() - t0
    assert res.base == TIMEOUT and res.base_failed_input == failed_input, res
    assert took < within_s < OLD_VERDICT_S, f"{name}: the verdict took {took:.1f} s"


def test_a_sample_cannot_stop_itself(seed):
    """SIGSTOP on itself, once a way to wait past its limit, is refused by the seccomp filter
    (round 5: stop signals are refused to every program): the sample fails at once."""
    task, expected = _task(seed)
    t0 = time.monotonic()
    code = "import signal\ndef f(x):\n    signal.raise_signal(signal.SIGSTOP)\n"
    res = check_sample(task, code, expected)
    assert res.base == FAIL and res.reason == "PermissionError", res
    assert time.monotonic() - t0 < 6.0


def _right_after(task, seconds: float, when: str = "True") -> str:
    """The task's right answer, after ``seconds`` of CPU on the inputs where ``when`` holds."""
    body = task.canonical_solution.split("return", 1)[1].strip()
    return (
        "import time\n"
        "def f(x):\n"
        f"    if {when}:\n"
        "        start = time.process_time()\n"
        f"        while time.process_time() - start < {seconds}:\n"
        "            pass\n"
        f"    return {body}\n"
    )


def test_a_slow_input_after_a_fast_one_still_passes(seed):
    """Input 0 returns at once (its line waits in the harness's batch), input 1 computes for
    about 1.3 s of CPU within its own 2 s limit: the watchdog, which cannot tell which input
    is under way, allows the largest limit of those that may be, and the sample passes."""
    task, expected = _task(seed)
    plus = expected["plus"]["out"]
    expected["base"] = {"out": [expected["base"]["out"][0], plus[0]], "t": [0.0, 0.5]}
    expected["plus"] = {"out": plus[1:], "t": [0.0]}  # limits: max(1, 4 t) = 1 s, 2 s; 1 s
    task.base_inputs, task.plus_inputs = (
        [task.base_inputs[0], task.plus_inputs[0]],
        [task.plus_inputs[1]],
    )
    slow_x = task.base_inputs[1][0]
    res = check_sample(task, _right_after(task, 1.3, when=f"x == {slow_x}"), expected)
    assert (res.base, res.plus) == (PASS, PASS), res


# Two ways to see the inputs before they are timed: the runner's frame while the program
# loads, and a thread started while it loads that waits for them
AHEAD = {
    "while loading": (
        "import sys\n"
        "_known = {repr(i): _slow(*i) for i in sys._getframe(1).f_locals['inputs']}\n"
        "def f(x):\n"
        "    return _known[repr([x])]\n"
    ),
    "from a thread": (
        "import sys, threading, time\n"
        "_known, _main = {}, threading.main_thread().ident\n"
        "def _steal():\n"
        "    while True:\n"
        "        frame = sys._current_frames().get(_main)\n"
        "        while frame is not None and 'inputs' not in frame.f_locals:\n"
        "            frame = frame.f_back\n"
        "        if frame is not None:\n"
        "            _known.update({repr(i): _slow(*i) for i in frame.f_locals['inputs']})\n"
        "            return\n"
        "        time.sleep(0.001)\n"
        "threading.Thread(target=_steal, daemon=True).start()\n"
        "def f(x):\n"
        "    while repr([x]) not in _known:\n"
        "        time.sleep(0.001)\n"
        "    return _known[repr([x])]\n"
    ),
}


@pytest.mark.parametrize("how", list(AHEAD))
def test_computing_ahead_gains_nothing(seed, how):
    """A solution 1.5 s per input against a 1 s limit, that computes every output ahead and
    answers each call at once. Before, reading the inputs from the runner's frame while it
    loaded passed base and plus (EvalPlus 0.3.1 passes it too): the loading was bounded only
    by the phase's budget. Now a phase's inputs reach the box only after its program has
    loaded, and computing them from a thread counts against the first input's limit."""
    task, expected = _task(seed)
    code = _right_after(task, 1.5).replace("def f(", "def _slow(") + AHEAD[how]
    res = check_sample(task, code, expected)
    assert res.base != PASS, res


def test_a_forged_huge_line_is_refused_before_it_is_decoded(seed):
    """A result line far bigger than the task's expected outputs (8 MiB of empty lists, which
    decoded would cost the scorer about 25 times that in memory) fails the sample at the
    sandbox's line cap, before any decoding."""
    task, expected = _task(seed)
    expected["bytes"] = 200  # the size of the task's cache line, as ``load_expected`` gives
    code = RESULT_PIPE + (
        "def f(x):\n"
        "    pipe = _result_pipe()\n"
        '    line = b\'{"phase":"base","i":0,"out":[\' + b\'[],\' * (8 << 18) + b\'[]]}\\n\'\n'
        "    while line:\n"
        "        line = line[os.write(pipe, line) :]\n"
        "    return 0\n"
    )
    res = check_sample(task, code, expected)
    assert res.base == FAIL and res.reason == "output over the cap", res


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-c", "import time\ntime.sleep(100)"],
        ["/bin/sh", "-c", "kill -STOP $$; sleep 100"],
    ],
    ids=["python sleeps", "shell stops itself (refused), then sleeps"],
)
def test_any_run_that_waits_is_timed_out_early(argv):
    """Every sandboxed run (build-data's programs, ``run_python``), not only the scorer's:
    one that waits is over its time limit once it has waited 2 x its CPU limit + 1 s, not at
    the wall-clock backstop of 5 x + 10 s. The backstop here is 300 s (the rule does not depend
    on it), so that a loaded machine's slow start cannot make the early verdict look late."""
    t0 = time.monotonic()
    res = sandbox.run_sandboxed(argv, cpu_s=1.0, timeout_s=300)
    took = time.monotonic() - t0
    assert res.timed_out and res.ending == sandbox.Ending("timeout", clock="wall"), res
    assert took < 150, took  # about 3 s: 2 x 1 s + 1 s, far from the backstop


def test_a_line_for_a_later_phase_fails_at_once(seed):
    """The plus phase's ``loaded`` line, forged while the base phase runs, would get the plus
    inputs sent early (to be computed in the base inputs' spare time): it fails the sample
    there, and the right answers after it change nothing."""
    task, expected = _task(seed)
    forged = b'{"phase":"plus","loaded":true}\n'
    code = RESULT_PIPE + _right_after(task, 0.0).replace(
        "def f(x):\n", f"def f(x):\n    os.write(_result_pipe(), {forged!r})\n"
    )
    res = check_sample(task, code, expected)
    assert res.base == FAIL and res.reason == "malformed result line: unexpected phase", res
