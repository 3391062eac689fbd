"""Trusted scoring of Python samples (HumanEval, MBPP): each sample runs once in the sandbox
and its result lines are judged here as they arrive, with EvalPlus's limits and fail-fast.

The sandbox returns computed outputs as plain data (``sandbox.codec``); only the scorer
compares them with expected outputs (``compare``), which it never hands to the sandbox. A
run's verdict never depends on its exit code or on what it printed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reflectioncoder.errors import ctrl_c_to_main_thread
from reflectioncoder.eval.compare import Comparer
from reflectioncoder.eval.expected import cache_dir
from reflectioncoder.eval.samples import Sample, number_samples
from reflectioncoder.eval.sandbox import (
    ExecResult,
    PreparedRun,
    codec,
    harness_argv,
    harness_files,
    isolation,
    site_paths,
    wall_backstop,
)
from reflectioncoder.eval.sandbox.records import IDLE_SHARE
from reflectioncoder.eval.tasks import PythonTask

__all__ = [
    "PASS",
    "FAIL",
    "TIMEOUT",
    "SampleResult",
    "check_sample",
    "score_python_samples",
]

PASS, FAIL, TIMEOUT = "pass", "fail", "timeout"
MIN_TIME_LIMIT = 1.0  # EvalPlus 0.3.1 defaults
GT_TIME_LIMIT_FACTOR = 4.0
TASK_TIMEOUT_CAP = 60.0
MEMORY_MB = 4096  # EvalPlus's 4 GiB address-space limit


@dataclass
class SampleResult:
    """Verdict of one completion: ``base`` / ``plus`` are pass | fail | timeout | None (not
    run: the base tests failed already)."""

    task_id: str
    completion_id: int
    base: str
    plus: str | None
    base_failed_input: int | None = None
    plus_failed_input: int | None = None
    reason: str = ""
    duration_s: float = 0.0

    @property
    def passed_base(self) -> bool:
        return self.base == PASS

    @property
    def passed_plus(self) -> bool:
        return self.base == PASS and self.plus == PASS


_LIMITS: dict[int, tuple[list[float], dict]] = {}


def _limits(expected: dict) -> list[float]:
    """Per-input limits ``max(1, 4 * gt_time)``, once per phase."""
    hit = _LIMITS.get(id(expected))
    if hit is None or hit[1] is not expected:
        limits = [max(MIN_TIME_LIMIT, GT_TIME_LIMIT_FACTOR * t) for t in expected["t"]]
        hit = (limits, expected)
        _LIMITS[id(expected)] = hit
    return hit[0]


class _Phase:
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


_JOB_CACHE: dict[tuple[str, int, int], tuple[str, list[bytes]]] = {}


def job_lines(
    task: PythonTask, phases: list[_Phase], solution: str, hide: Sequence[str]
) -> tuple[bytes, list[bytes]]:
    """The job's first line (the program, its settings, each phase's name and limits) and
    each phase's inputs as a line of their own, which the scorer sends only once the phase's
    program has loaded: a program cannot compute every output while it loads, reading the
    inputs from the runner (it would then answer each call at once, its time unseen)."""
    tail, inputs = _job_tail(task, phases)
    head = '{"code": ' + json.dumps(solution) + ', "hidden": ' + json.dumps(list(hide)) + ", "
    return (head + tail + "\n").encode(), inputs


def _job_tail(task: PythonTask, phases: list[_Phase]) -> tuple[str, list[bytes]]:
    key = (task.task_id, id(phases[0].source), len(phases))
    hit = _JOB_CACHE.get(key)
    if hit is None:
        body = {
            "entry_point": task.entry_point,
            "guard": True,
            "strict": isolation().audit_guard,
            "sys_path": site_paths(),
            "memory_bytes": MEMORY_MB << 20,
            "fail_fast": True,
            "phases": [{"name": p.name, "time_limits": p.limits} for p in phases],
        }
        inputs = [(json.dumps(codec.encode(p.inputs)) + "\n").encode() for p in phases]
        hit = (json.dumps(body)[1:], inputs)  # the job is '{"code": ..., ' + tail
        _JOB_CACHE[key] = hit
    return hit


def prepare_harness(hide: Sequence[str] = ()) -> PreparedRun:
    """A sandboxed harness process, started and waiting for its one job. The data and the
    expected-output cache are hidden from it (bwrap mounts; the audit guard in the fallback)."""
    return PreparedRun(
        harness_argv(),
        files=harness_files(),
        memory_mb=MEMORY_MB,
        cpu_s=int(2 * TASK_TIMEOUT_CAP + 10),  # a CPU backstop; the wall clock decides
        hide=_hidden(hide),
    )


def _hidden(hide: Sequence[str]) -> list[str]:
    # real paths: bwrap cannot mount over a path that goes through a symlink
    return [os.path.realpath(h) for h in (*hide, cache_dir())]


# CPU seconds an input may use beyond its limit, measured outside: encoding and writing its
# output, and the scorer's reading it (the harness stops the input itself at the limit)
CPU_SLACK_S = 0.1
BATCH_S = 0.02  # the harness sends result lines together when they come within this (wall)
# bytes of result lines one sample may send in all: this plus 8x its expected outputs' encoding
# (floats may print longer than the expected ones and still be close enough)
MAX_SAMPLE_OUTPUT = 64 << 20
# bytes of ONE result line: this plus 8x the task's expected outputs' encoding (one output is
# part of it), at most codec.MAX_LINE. A forged line of 64 MiB (``[[],[],...]``) cost the
# scorer 1.5 GiB and seconds to decode; a task's right output is never bigger than all its
# expected outputs, floats aside
MAX_LINE_FLOOR = 64 << 10
REASON_CHARS = 100  # untrusted text (an exception's name) kept in a verdict's reason
# Inputs the harness may have finished without the scorer seeing their lines yet (it batches
# up to 257 lines, ``runner``): the input under way is one of the next this many
PENDING_INPUTS = 258
# A step (a phase's load, or an input) that has lasted 2 x its limit + 1 s of wall time while
# the run used less than IDLE_SHARE of it in CPU is waiting (sleep, SIGSTOP, a blocking
# read), not computing. A load waits this long at least: cold imports read the disk.
IDLE_LOAD_S = 10.0


class _Judge:
    """Judges one sample's result lines as they arrive; True stops the run (a verdict is
    reached), bytes are the next phase's inputs (answering its "loaded" line). Whatever a line
    holds, the worst it can do is fail this sample."""

    def __init__(self, phases: list[_Phase], clock: Callable[[], float], max_bytes: int) -> None:
        self.phases, self.clock, self.received, self.max_bytes = phases, clock, 0, max_bytes
        self.start = clock()
        self.by_name = {p.name: p for p in phases}
        # Each input's limit, checked here on the run's own clock (a program that catches the
        # harness's timer signal gains nothing): lines that arrive together (one batch,
        # within BATCH_S) are checked as one, against the limit of the batch's last input
        # (the harness sends a batch when an input ends more than BATCH_S after the last one)
        self.mark: float | None = None  # the clock when the current input started
        self.batch: tuple[_Phase, int, float, float] | None = None  # phase, i, clock, wall
        self.step = (time.monotonic(), self.start)  # wall and clock when the last line came

    def __call__(self, line: bytes) -> bool | bytes:
        self.received += len(line)
        try:
            if self.received > self.max_bytes:
                return self._fail_current(FAIL, "output over the cap")
            return self._judge(codec.read_result_row(line))
        except Exception as exc:  # DecodeError, or anything a crafted value provokes
            return self._fail_current(FAIL, f"malformed result line: {type(exc).__name__}")

    def stalled(self) -> bool:
        """The watchdog, asked between lines: True (the phase under way failed) when the step
        under way (its load, or its next input) is past its limit with no line to say so:
        over its CPU time (a program that ignores or catches the harness's timer), waiting
        instead of computing, or past the wall-clock backstop of its own limit (not of the
        whole sample's budget: a sample that sleeps costs seconds, not minutes)."""
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
        if cpu > cpu_limit:
            reason = "over its CPU-time limit, measured outside"
        elif wall > idle_after and cpu < IDLE_SHARE * wall:
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
        if used > phase.limits[i] + BATCH_S + CPU_SLACK_S and phase.status is None:
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

    def _phase_done(self, phase: _Phase, now: float) -> bool:
        if phase.next != len(phase.inputs):
            phase.fail(FAIL, phase.next, "missing outputs")
            return True
        phase.status = PASS
        later = self.phases[self.phases.index(phase) + 1 :]
        if later:
            later[0].started = now
        # the last phase decided: stop here rather than wait for the interpreter to end
        return not later


def check_sample(
    task: PythonTask,
    solution: str,
    expected: dict,
    *,
    completion_id: int = 0,
    base_only: bool = False,
    hide: Sequence[str] = (),
    prepared: PreparedRun | None = None,
) -> SampleResult:
    """Run one whole solution (prompt + completion) on the task's tests in one sandboxed
    process and judge each output here, stopping at the first failure (EvalPlus fail-fast).
    ``prepared``: a fresh process from ``prepare_harness`` (started ahead), used for this
    sample only."""
    phases = [_Phase("base", task, task.base_inputs, expected["base"])]
    if not base_only:
        phases.append(_Phase("plus", task, task.plus_inputs, expected["plus"]))
    # the program sees neither the data nor the expected outputs (bwrap: hidden mounts;
    # fallback: the audit guard refuses reads there)
    hide = _hidden(hide)
    job, inputs = job_lines(task, phases, solution, hide)
    for phase, line in zip(phases, inputs, strict=True):
        phase.inputs_line = line
    budget = sum(p.budget for p in phases) + 1.0
    box = prepared or prepare_harness(hide)
    # Budgets count CPU seconds of the sample's cgroup (the wall clock where none counts them):
    # EvalPlus's limits are wall time on an idle machine, which is CPU time; a loaded machine
    # then changes no verdict. The wall clock only backs them up, generously.
    clock = box.cpu_time_s if box.cpu_time_s() is not None else time.monotonic
    judge = _Judge(phases, clock, MAX_SAMPLE_OUTPUT + 8 * expected.get("bytes", 0))
    res = box.run(
        job,
        cpu_s=budget,
        timeout_s=wall_backstop(budget),
        output_limit=_line_limit(expected),
        on_stdout_line=judge,
        watchdog=judge.stalled,
    )
    judge.close_batch()  # the last lines' CPU time, when the run ended without a verdict
    _fail_undecided(phases, res, budget)
    return _sample_result(task, completion_id, phases, res)


def _line_limit(expected: dict) -> int:
    """The most one result line of the task may hold (``MAX_LINE_FLOOR``); codec.MAX_LINE
    where the caller gave no size of the expected outputs (``bytes``, the cache line's)."""
    if "bytes" not in expected:
        return codec.MAX_LINE
    return min(codec.MAX_LINE, MAX_LINE_FLOOR + 8 * expected["bytes"])


def _fail_undecided(phases: list[_Phase], res: ExecResult, budget: float) -> None:
    """A phase the judge left undecided failed by how the run ended."""
    for p in phases:
        if p.status is None:
            if res.timed_out:
                over_cpu = res.cpu_time_s is not None and res.cpu_time_s >= budget
                p.fail(TIMEOUT, p.next, "CPU-time budget" if over_cpu else "wall-clock backstop")
            elif res.output_truncated:
                p.fail(FAIL, p.next, "output over the cap")
            else:
                tail = res.stderr.strip().splitlines()[-1:] or [""]
                ended = res.ending.describe() if res.ending else f"exit code {res.exit_code}"
                p.fail(FAIL, p.next, f"process ended ({ended}) {tail[0][:200]}")


def _sample_result(
    task: PythonTask, completion_id: int, phases: list[_Phase], res: ExecResult
) -> SampleResult:
    """The verdict: plus counts only once base passed; the reason of the phase that failed."""
    base = phases[0]
    plus = phases[1] if len(phases) > 1 else None
    plus_status = None if plus is None or base.status != PASS else plus.status
    reason = base.reason if base.status != PASS else (plus.reason if plus else "")
    return SampleResult(
        task_id=task.task_id,
        completion_id=completion_id,
        base=base.status or FAIL,
        plus=plus_status,
        base_failed_input=base.failed_input,
        plus_failed_input=plus.failed_input if plus is not None and plus_status else None,
        reason=reason if (base.status != PASS or plus_status not in (PASS, None)) else "",
        duration_s=res.duration_s,
    )


BOX_COST_S = 0.02  # CPU seconds of a box's start, set-up and verdict, beside its tests


def known_cost(expected: dict, base_only: bool = False) -> float:
    """What a sample of the task is expected to cost, in CPU seconds: the canonical solution's
    measured time on every input (the expected-output cache's ``t``), and the box."""
    phases = ("base",) if base_only else ("base", "plus")
    return BOX_COST_S + sum(sum(expected[p]["t"]) for p in phases)


def score_python_samples(
    tasks: dict[str, PythonTask],
    samples: Iterable[dict],
    expected: dict[str, dict],
    *,
    parallel: int = 2,
    base_only: bool = False,
    progress: Callable[[int], None] | None = None,
    hide: Sequence[str] = (),
) -> list[SampleResult]:
    """Score samples (``task_id`` + ``completion`` or ``solution``) with ``parallel`` workers.
    The solution run is ``prompt + completion`` (EvalPlus), or ``solution`` as given."""
    jobs = number_samples(tasks, samples)

    # Each worker keeps the NEXT sample's sandbox starting while it scores the current one
    # (start-up latency hidden); every process still serves exactly one sample.
    local = threading.local()
    spare: list[PreparedRun] = []
    lock = threading.Lock()

    def one(sample: Sample) -> SampleResult:
        tid = sample.task_id
        code = sample.text if sample.whole else tasks[tid].prompt + sample.text
        box = getattr(local, "next", None) or prepare_harness(hide)
        local.next = prepare_harness(hide)
        with lock:
            spare.append(local.next)
        try:
            r = check_sample(
                tasks[tid],
                code,
                expected[tid],
                completion_id=sample.completion_id,
                base_only=base_only,
                hide=hide,
                prepared=box,
            )
        finally:
            box.discard()
        if progress:
            progress(1)
        return r

    # Costliest first keeps both workers busy to the end (a worker left with one long sample
    # while the other idles was a second of HumanEval(+)'s wall time)
    cost = {tid: known_cost(expected[tid], base_only) for tid in {s.task_id for s in jobs}}
    order = sorted(range(len(jobs)), key=lambda j: -cost[jobs[j].task_id])
    try:
        with ThreadPoolExecutor(max(1, parallel), initializer=ctrl_c_to_main_thread) as pool:
            done = dict(zip(order, pool.map(one, [jobs[j] for j in order]), strict=True))
    finally:
        for box in spare:  # the unused ones (discard is idempotent)
            box.discard()
    return [done[j] for j in range(len(jobs))]
