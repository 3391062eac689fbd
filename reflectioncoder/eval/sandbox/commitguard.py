"""A run's bound on the machine's commit limit where the host runs strict overcommit.

With ``vm.overcommit_memory`` 2 the kernel charges every writable private mapping (and shared
anonymous memory) to one count for the whole machine, ``Committed_AS``, at the mapping,
whether or not a page is ever touched, and refuses any allocation past ``CommitLimit`` (swap
plus half the memory by default): the scorer's, a sibling sample's compiler, another user's
job. No cgroup bounds commit, and a run's per-process address-space limit bounds each process
alone: a C++ run of 64 processes could commit 64 times its memory limit without using a page
(round 7 named the gap in ``not_guaranteed``; round 8 enforces a bound).

``CommitGuard`` stops a run whose processes have committed more than its memory limit (what
it may use anyway: an honest run reserves address space with ``PROT_NONE``, which is not
charged, and commits what it uses; the JVM, V8, Go and glibc all reserve so), ending
``commit``. It acts only on a host in strict mode, and counts only while the machine's
``Committed_AS`` is past the run's bound (no run can be over it before). A count reads every
mapping of the run's processes, so, as the open-file guard does, the run's CPU is held while
it is counted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

from reflectioncoder.eval.sandbox import probe

__all__ = ["CommitGuard", "committed", "machine_commit", "run_guard", "strict"]

_MEMINFO = "/proc/meminfo"
_STRICT = [-1.0, False]  # when the mode was last read, and whether it was strict
_STRICT_AGE_S = 5.0  # read again at most this often: an admin may switch it while we score


def strict(max_age_s: float = _STRICT_AGE_S) -> bool:
    """Whether the host runs strict overcommit now (``vm.overcommit_memory`` 2)."""
    if time.monotonic() - _STRICT[0] >= max_age_s:
        mode = ""
        with contextlib.suppress(OSError), open(probe.OVERCOMMIT) as f:
            mode = f.read().strip()
        _STRICT[:] = [time.monotonic(), mode == "2"]
    return bool(_STRICT[1])


def machine_commit() -> int | None:
    """Bytes committed on the machine now (``Committed_AS``), None where /proc does not say."""
    with contextlib.suppress(OSError, ValueError), open(_MEMINFO, "rb") as f:
        for line in f:
            if line.startswith(b"Committed_AS:"):
                return int(line.split()[1]) << 10
    return None


def committed(pids: Iterable[int], stop_over: int) -> int:
    """Bytes the processes ``pids`` have committed: their writable private mappings and their
    shared anonymous ones, each counted, as the kernel charges them. Stops once past
    ``stop_over``."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                perms = fields[1]
                if perms[1:2] != b"w" or not (perms[3:4] == b"p" or _shared_anon(fields)):
                    continue
                start, _, end = fields[0].partition(b"-")
                total += int(end, 16) - int(start, 16)
                if total > stop_over:
                    return total
    return total


def _shared_anon(fields: list[bytes]) -> bool:
    """A writable shared mapping the kernel charges at its making: anonymous shared memory
    (shown as ``/dev/zero``) and System V segments (a file's pages, ``memfd``'s and tmpfs's
    among them, are charged as they are written, and show in ``Committed_AS`` then)."""
    path = fields[5].strip() if len(fields) > 5 else b""
    return path.startswith((b"/dev/zero", b"/SYSV"))


class CommitGuard:
    """``__call__`` is True once the run's processes (``pids``) have committed more than
    ``bound`` bytes on a host in strict overcommit (then ``fired``). Asked every 50 ms by the
    I/O loop; counts with the run's CPU held (``hold(True)``), released after unless it
    fired (the run is then killed)."""

    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        bound: int,
        hold: Callable[[bool], None] = lambda held: None,
    ) -> None:
        self.pids, self.bound, self.hold = pids, bound, hold
        self.fired = False

    def watching(self, inner: Callable[[], bool] | None) -> Callable[[], bool]:
        """A watchdog asking this guard, then ``inner`` (the caller's, or None)."""
        return lambda: self() or bool(inner is not None and inner())

    def __call__(self) -> bool:
        if self.fired or not strict():
            return self.fired
        now = machine_commit()
        if now is None or now <= self.bound:
            return False  # the whole machine has committed less than this run may
        self.hold(True)  # the run maps nothing more while it is counted
        try:
            self.fired = committed(self.pids(), self.bound) > self.bound
        finally:
            if not self.fired:
                self.hold(False)
        return self.fired


def run_guard(run, pids: Callable[[], Iterable[int]]) -> CommitGuard:
    """The guard of a started ``process.PreparedRun`` whose processes ``pids`` lists (the
    open-file guard's list): bound by its memory limit, its CPU held while counted."""
    hold = run.cgroup.hold_cpu if run.cgroup is not None else (lambda held: None)
    return CommitGuard(pids, run.memory, hold)
