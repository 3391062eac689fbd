"""Whether a run that looks idle (under ``IDLE_SHARE`` of its wall time in CPU) waits of its own
(a sleep, SIGSTOP, a blocking read) or only for a CPU. A run starved by a loaded machine, or by
its CPU quota, is runnable while it waits: the kernel counts that time per task (schedstat's
run-queue delay, throttling included). Over a window of ``WINDOW_S`` the run is idle only if its
CPU time and its tasks' run-queue waits together stay under ``IDLE_SHARE`` of the window: at load
~15 on 2 cores an honest reference sample got under a tenth of a core and was failed "waiting,
not computing" (tests/test_eval_score.py, CL-34B, twice)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from reflectioncoder.eval.sandbox.records import IDLE_SHARE

__all__ = ["WINDOW_S", "IdleWindow", "run_queue_waits"]

WINDOW_S = 1.0  # an idle verdict comes this much later; a window long enough to measure


def run_queue_waits(pids: list[int]) -> dict[int, int]:
    """Each thread of ``pids``: the nanoseconds it has been runnable without a CPU."""
    waits: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        waits[int(tid)] = int(f.read().split()[1])
    return waits


class IdleWindow:
    """Asked (``idle``) while a run looks idle: True once a whole window found it neither
    computing nor waiting for a CPU for all but ``IDLE_SHARE`` of it. A thread that ended within
    the window takes its waits with it (counted as not wanting a CPU)."""

    def __init__(self, cpu: Callable[[], float | None], pids: Callable[[], list[int]]) -> None:
        self.cpu, self.pids = cpu, pids
        self.mark: tuple[float, float, dict[int, int]] | None = None

    def reset(self) -> None:
        """The run stopped looking idle: a later window starts afresh."""
        self.mark = None

    def idle(self) -> bool:
        now = time.monotonic()
        if self.mark is not None and now - self.mark[0] < WINDOW_S:
            return False
        cpu, waits = self.cpu(), run_queue_waits(self.pids())
        if cpu is None:
            return True  # nothing counts it: the caller's rule alone
        mark, self.mark = self.mark, (now, cpu, waits)
        if mark is None:
            return False
        waited = sum(max(0, ns - mark[2].get(tid, 0)) for tid, ns in waits.items()) / 1e9
        return (cpu - mark[1]) + waited < IDLE_SHARE * (now - mark[0])
