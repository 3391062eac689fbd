"""Trusted scoring of Python samples (HumanEval, MBPP): each sample runs once in the sandbox
and its result lines are judged as they arrive (``judge``), with EvalPlus's limits and fail-fast.

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
from reflectioncoder.eval.compare import MBPP_OUTPUT_SET_EQ
from reflectioncoder.eval.expected import cache_dir
from reflectioncoder.eval.judge import (
    FAIL,
    PASS,
    TASK_TIMEOUT_CAP,
    TIMEOUT,
    Judge,
    Phase,
)
from reflectioncoder.eval.samples import Sample, number_samples
from reflectioncoder.eval.sandbox import (
    ExecResult,
    PreparedRun,
    codec,
    harness_argv,
    harness_files,
    isolation,
    result_decode,
    site_paths,
    wall_backstop,
)
from reflectioncoder.eval.tasks import PythonTask

__all__ = [
    "PASS",
    "FAIL",
    "TIMEOUT",
    "SampleResult",
    "check_sample",
    "score_python_samples",
]

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


_JOB_CACHE: dict[tuple[str, int, int], tuple[str, list[bytes]]] = {}


def job_lines(
    task: PythonTask, phases: list[Phase], solution: str, hide: Sequence[str]
) -> tuple[bytes, list[bytes]]:
    """The job's first line (the program, its settings, each phase's name and limits) and
    each phase's inputs as a line of their own, which the scorer sends only once the phase's
    program has loaded: a program cannot compute every output while it loads, reading the
    inputs from the runner (it would then answer each call at once, its time unseen)."""
    tail, inputs = _job_tail(task, phases)
    head = '{"code": ' + json.dumps(solution) + ', "hidden": ' + json.dumps(list(hide)) + ", "
    return (head + tail + "\n").encode(), inputs


def _job_tail(task: PythonTask, phases: list[Phase]) -> tuple[str, list[bytes]]:
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
            "output_set_eq": task.dataset == "mbpp" and task.entry_point in MBPP_OUTPUT_SET_EQ,
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


# bytes of result lines one sample may send in all: this plus 8x its expected outputs' encoding
# (floats may print longer than the expected ones and still be close enough)
MAX_SAMPLE_OUTPUT = 64 << 20
# bytes of ONE result line: this plus 8x the task's expected outputs' encoding (one output is
# part of it), at most result_decode.MAX_LINE. A forged line of 64 MiB (``[[],[],...]``) cost the
# scorer 1.5 GiB and seconds to decode; a task's right output is never bigger than all its
# expected outputs, floats aside
MAX_LINE_FLOOR = 64 << 10


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
    phases = [Phase("base", task, task.base_inputs, expected["base"])]
    if not base_only:
        phases.append(Phase("plus", task, task.plus_inputs, expected["plus"]))
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
    max_bytes = MAX_SAMPLE_OUTPUT + 8 * expected.get("bytes", 0)
    judge = Judge(phases, clock, max_bytes, box.idle_window())
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
    """The most one result line of the task may hold (``MAX_LINE_FLOOR``); result_decode.MAX_LINE
    where the caller gave no size of the expected outputs (``bytes``, the cache line's)."""
    if "bytes" not in expected:
        return result_decode.MAX_LINE
    return min(result_decode.MAX_LINE, MAX_LINE_FLOOR + 8 * expected["bytes"])


def _fail_undecided(phases: list[Phase], res: ExecResult, budget: float) -> None:
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
                p.fail(FAIL, p.next, f"process ended ({ended}) {tail[0][:200]}".rstrip())


def _sample_result(
    task: PythonTask, completion_id: int, phases: list[Phase], res: ExecResult
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
