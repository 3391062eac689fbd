"""Judging one Python sample as its result lines arrive: the phases of its test run (base,
plus) with EvalPlus's per-input limits, and the ``Judge`` that reads each line the sandboxed
harness sends, compares its output, times it on the run's own clock and decides the verdict
(``score`` runs the sample and reports it)."""

from __future__ import annotations

import time
from collections.abc import Callable

from reflectioncoder.eval.compare import Comparer
from reflectioncoder.eval.sandbox import wall_backstop
from reflectioncoder.eval.sandbox.cpuwait import IdleWindow
from reflectioncoder.eval.sandbox.records import IDLE_SHARE
from reflectioncoder.eval.sandbox.result_decode import read_result_row
from reflectioncoder.eval.tasks import PythonTask

__all__ = ["FAIL", "PASS", "TIMEOUT", "Judge", "Phase"]

PASS, FAIL, TIMEOUT = "pass", "fail", "timeout"
MIN_TIME_LIMIT = 1.0  # EvalPlus 0.3.1 defaults
GT_TIME_LIMIT_FACTOR = 4.0
TASK_TIMEOUT_CAP = 60.0


_LIMITS: dict[int, tuple[list[float], dict]] = {}


def _limits(expected: dict) -> list[float]:
    """Per-input limits ``max(1, 4 * gt_time)``, once per phase."""
    hit = _LIMITS.get(id(expected))
    if hit is None or hit[1] is not expected:
        limits = [max(MIN_TIME_LIMIT, GT_TIME_LIMIT_FACTOR * t) for t in expected["t"]]
        hit = (limits, expected)
        _LIMITS[id(expected)] = hit
    return hit[0]


class Phase:
    """One phase of a sample's run (``base`` or ``plus``): its inputs, per-input limits and
    budget, how far the judge got, and its verdict once decided."""

    def __init__(self, name: str, task: PythonTask, inputs: list, expected: dict) -> None:
        self.name, self.inputs = name, inputs
        self.source, self.limits = expected, _limits(expected)
        # EvalPlus gives each phase's process min(60, sum of limits) + 1 s, joined with 1 s more
        self.budget = min(TASK_TIMEOUT_CAP, sum(self.limits)) + 2.0
        self.started: float | None = None
        self.cmp = Comparer(task)
        self.next = 0
        self.loaded = False
        self.status: str | None = None
        self.failed_input: int | None = None
        self.reason = ""
        self.inputs_line = b""  # sent to the program once it has loaded (``job_lines``)

    @property
    def expected(self) -> list:
        """The expected outputs, read when the first output is compared (a plus phase's are
        decoded then, ``expected.LazyOutputs``)."""
        return self.source["out"]

    def fail(self, status: str, i: int | None, reason: str) -> None:
        self.status, self.failed_input, self.reason = status, i, reason


# CPU seconds an input may use beyond its limit, measured outside: encoding and writing its
# output, and the scorer's reading it (the harness stops the input itself at the limit)
CPU_SLACK_S = 0.1
BATCH_S = 0.02  # the harness sends result lines together when they come within this (wall)
REASON_CHARS = 100  # untrusted text (an exception's name) kept in a verdict's reason
# Inputs the harness may have finished without the scorer seeing their lines yet (it batches
# up to 257 lines, ``runner``): the input under way is one of the next this many
PENDING_INPUTS = 258
# The scorer's thread asks the watchdog every 50 ms (``sandbox.pump``); a call later than
# SCORER_LATE_S past that finds the scorer was held up (another sample's long result line
# decoded under the GIL, the machine's load): that time is not the sample's. Round 9: an honest
# sample waiting for its plus inputs was timed out "waiting, not computing" beside a hostile
# one whose 60 MB result line the scorer decoded meanwhile.
WATCH_S, SCORER_LATE_S = 0.05, 0.1
# A step (a phase's load, or an input) that has lasted 2 x its limit + 1 s of wall time while
# the run used less than IDLE_SHARE of it in CPU is waiting (sleep, SIGSTOP, a blocking
# read), not computing. A load waits this long at least: cold imports read the disk.
IDLE_LOAD_S = 10.0


class Judge:
    """Judges one sample's result lines as they arrive; True stops the run (a verdict is
    reached), bytes are the next phase's inputs (answering its "loaded" line). Whatever a line
    holds, the worst it can do is fail this sample."""

    def __init__(
        self,
        phases: list[Phase],
        clock: Callable[[], float],
        max_bytes: int,
        window: IdleWindow | None = None,
    ) -> None:
        self.phases, self.clock, self.received, self.max_bytes = phases, clock, 0, max_bytes
        # tells a step that waits from one starved of CPU by the machine's load (``cpuwait``)
        self.window = window
        self.start = clock()
        self.by_name = {p.name: p for p in phases}
        # Each input's limit, checked here on the run's own clock (a program that catches the
        # harness's timer signal gains nothing): lines that arrive together (one batch,
        # within BATCH_S) are checked as one, against the limit of the batch's last input
        # (the harness sends a batch when an input ends more than BATCH_S after the last one)
        self.mark: float | None = None  # the clock when the current input started
        self.batch: tuple[Phase, int, float, float] | None = None  # phase, i, clock, wall
        self.step = (time.monotonic(), self.start)  # wall and clock when the last line came
        self.seen: float | None = None  # when the scorer's thread last called this judge
        self.late = False  # the scorer was held up since the open batch began
        self.batch_first = 0  # the open batch's first input
        self.batch_late = False  # its CPU time spans a hold-up: checked against its inputs'

    def _scorer_held_up(self) -> None:
        """Take the time the scorer's own thread was held up out of the step under way (its
        wall clock starts that much later), and remember it for the batch it spans."""
        now = time.monotonic()
        lag = now - (self.seen if self.seen is not None else now) - WATCH_S
        self.seen = now
        if lag > SCORER_LATE_S:
            self.step = (self.step[0] + lag, self.step[1])
            self.late = True

    def __call__(self, line: bytes) -> bool | bytes:
        self._scorer_held_up()
        self.received += len(line)
        try:
            if self.received > self.max_bytes:
                return self._fail_current(FAIL, "output over the cap")
            return self._judge(read_result_row(line))
        except Exception as exc:  # DecodeError, or anything a crafted value provokes
            return self._fail_current(FAIL, f"malformed result line: {type(exc).__name__}")

    def stalled(self) -> bool:
        """The watchdog, asked between lines: True (the phase under way failed) when the step
        under way (its load, or its next input) is past its limit with no line to say so:
        over its CPU time (a program that ignores or catches the harness's timer), waiting
        instead of computing, or past the wall-clock backstop of its own limit (not of the
        whole sample's budget: a sample that sleeps costs seconds, not minutes)."""
        self._scorer_held_up()
        phase = next((p for p in self.phases if p.status is None), None)
        if phase is None:
            return False
        wall = time.monotonic() - self.step[0]
        cpu = self.clock() - self.step[1]
        if phase.loaded:
            limit = max(phase.limits[phase.next : phase.next + PENDING_INPUTS], default=1.0)
            cpu_limit, idle_after, at = limit + BATCH_S + CPU_SLACK_S, 2 * limit + 1, phase.next
        else:
            limit = cpu_limit = phase.budget
            idle_after, at = max(IDLE_LOAD_S, 2 * MIN_TIME_LIMIT + 1), None
        looks_idle = wall > idle_after and cpu < IDLE_SHARE * wall
        if not looks_idle and self.window is not None:
            self.window.reset()
        if cpu > cpu_limit:
            reason = "over its CPU-time limit, measured outside"
        elif looks_idle and (self.window is None or self.window.idle()):
            reason = "waiting, not computing, past its time limit"
        elif wall > wall_backstop(limit):
            reason = "over the wall-clock backstop of its time limit"
        else:
            return False
        phase.fail(TIMEOUT, at, reason)
        return True

    def _fail_current(self, status: str, reason: str) -> bool:
        for p in self.phases:
            if p.status is None:
                p.fail(status, p.next, reason)
                break
        return True

    def close_batch(self, wall: float | None = None) -> bool:
        """Check the open batch's CPU time (when ``wall`` says a new batch has begun, or at
        the end): True when its last input went over its limit."""
        if self.batch is None or (wall is not None and wall - self.batch[3] <= BATCH_S / 4):
            return False
        phase, i, cpu, _ = self.batch
        self.batch = None
        used, self.mark = cpu - (self.mark if self.mark is not None else cpu), cpu
        # a batch read after the scorer was held up holds what the program computed meanwhile
        first = self.batch_first if self.batch_late else i
        if used > sum(phase.limits[first : i + 1]) + BATCH_S + CPU_SLACK_S and not phase.status:
            phase.fail(TIMEOUT, i, "over its CPU-time limit, measured outside")
            return True
        return False

    def _judge(self, row: dict) -> bool | bytes:
        phase = self.by_name.get(row["phase"])
        current = next((p for p in self.phases if p.status is None), None)
        if phase is None or phase is not current:  # the harness never writes these: a line
            # for a later phase would get its inputs sent early, to be computed ahead
            return self._fail_current(FAIL, "malformed result line: unexpected phase")
        now, wall = self.clock(), time.monotonic()
        self.step = (wall, now)  # the watchdog's step starts again (a forged line fails above)
        if self.close_batch(wall):
            return True
        if phase.started is None:  # the base phase starts with the run, plus when base ends
            phase.started = self.start
        if now - phase.started > phase.budget:  # as EvalPlus's per-phase process timeout
            phase.fail(TIMEOUT, phase.next, "phase over its time budget")
            return True
        if "load_error" in row:
            phase.fail(FAIL, None, f"load error: {row['load_error'][:REASON_CHARS]}")
            return True
        if row.get("loaded"):
            if phase.loaded:  # the harness says it once: a second one is forged
                return self._fail_current(FAIL, "malformed result line: loaded twice")
            phase.loaded, self.mark = True, now
            return phase.inputs_line  # the phase's inputs, only now
        if row.get("done"):
            if self.close_batch():
                return True
            return self._phase_done(phase, now)
        i = row.get("i")
        if i != phase.next:
            phase.fail(FAIL, phase.next, "out-of-order result")
            return True
        if not phase.loaded:
            phase.fail(FAIL, i, "a result before the program loaded")
            return True
        if self.batch is None:
            self.batch = (phase, i, now, time.monotonic())
            self.batch_first, self.batch_late, self.late = i, self.late, False
        else:
            self.batch = (phase, i, self.batch[2], self.batch[3])
        if "error" in row:
            kind = TIMEOUT if row["error"] == "TimeoutException" else FAIL
            phase.fail(kind, i, row["error"][:REASON_CHARS])
            return True
        if "out" not in row:
            phase.fail(FAIL, i, "output is not plain data")
            return True
        if not phase.cmp(phase.inputs[i], row["out"], phase.expected[i]):
            phase.fail(FAIL, i, "wrong output")
            return True
        phase.next += 1
        return False

    def _phase_done(self, phase: Phase, now: float) -> bool:
        if phase.next != len(phase.inputs):
            phase.fail(FAIL, phase.next, "missing outputs")
            return True
        phase.status = PASS
        later = self.phases[self.phases.index(phase) + 1 :]
        if later:
            later[0].started = now
        # the last phase decided: stop here rather than wait for the interpreter to end
        return not later
