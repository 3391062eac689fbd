"""A run's share of the machine's open-file table (``fs.file-max``), at every level.

The kernel keeps one count of open files (``struct file``) for the whole machine: past
``fs.file-max`` every process without ``CAP_SYS_ADMIN`` gets ``ENFILE`` at each open (a
sibling sample's compiler, its runtime loading a library, another user's job), while the
scorer (root) goes on. No namespace has its own, and a run's per-process limits do not bound
what it holds: a file it maps stays open after it closes the descriptor, so a process holds
up to ``vm.max_map_count`` (65,530) files with 256 descriptors, and a run of 64 processes
about four million, at some 400 bytes of its memory limit each (a C++ run's 2 GiB holds a
million). Where the table is sized from the machine's memory (1 slot per 10 KiB: 2.4 million
on a 24 GiB machine, without systemd raising it), one run could fill it.

``FileTableGuard`` stops a run holding more than its share of the table (its processes'
descriptors and mappings, counted from ``/proc``): ``1/SHARE``, less where more runs are
under way in this process (their shares together stay under half the table, whatever the
scorer's ``--parallel``; round 7: 64 runs at 1/64 each could fill it), and with the runs of
every other scorer on the machine started by root counted too (their uid claims,
``runuser.claims_held``; round 8: two scorers each gave their runs half). It counts only while
the machine's whole count is past that share (no run can be over its share before), so it
costs one read of ``/proc/sys/fs/file-nr`` per 50 ms tick on a machine where nothing holds
many files. A count walks every mapping of every process (some 0.7 us each, 65,530 a
process), so the run's CPU is held (its cgroup's quota at its least) while it is counted, and
it is counted at every tick while the machine is past its share: before (round 7), a run
that padded its processes with anonymous mappings made each count take seconds, the next
came 20 counts' time later, and it opened files all the while (2.7 times its share, measured,
and more with more padding).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable

from reflectioncoder.eval.sandbox import runuser
from reflectioncoder.eval.sandbox.teardown import marked_pids

__all__ = ["SHARE", "FileTableGuard", "files_held", "machine_runs", "run_guard", "table"]

SHARE = 64  # a run may hold 1/64 of the table: 38,000 slots of 2.4 million (an honest run
# holds tens to a few hundred: its descriptors and the libraries it maps, 1 to 5 times each)
_FILE_NR = "/proc/sys/fs/file-nr"  # allocated, free (always 0 since 2.6), max
_LIVE: set[int] = set()  # ids of the guards of runs under way in this process
_LIVE_LOCK = threading.Lock()
_MACHINE = [-1.0, 0]  # when the machine's runs were last counted, and how many
_MACHINE_AGE_S = 0.5  # counted again at most this often (one listdir)


def machine_runs(max_age_s: float = _MACHINE_AGE_S) -> int:
    """Runs under way on the machine in every scorer started by root (``runuser.CLAIMS``: each
    holds a uid claim while under way), read at most every ``max_age_s``."""
    with _LIVE_LOCK:
        if time.monotonic() - _MACHINE[0] >= max_age_s:
            _MACHINE[:] = [time.monotonic(), runuser.claims_held()]
        return int(_MACHINE[1])


def table() -> tuple[int, int] | None:
    """(files open on the machine now, ``fs.file-max``), or None where /proc does not say."""
    try:
        with open(_FILE_NR, "rb") as f:
            allocated, _, maximum = f.read().split()[:3]
        return int(allocated), int(maximum)
    except (OSError, ValueError):
        return None


def files_held(pids: Iterable[int], stop_over: int) -> int:
    """Open files ``pids`` hold: descriptors (of each descriptor table: a thread made without
    ``CLONE_FILES`` has its own, which ``/proc/<pid>/fd`` does not show) plus mappings (each
    counted: one may be the only holder of its file; anonymous ones too: a count reads them
    all, so a run padding its processes with them made each count take seconds, and with them
    counted no count reads more than ``stop_over`` lines). Stops once past ``stop_over``."""
    held = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            held += len(os.listdir(f"/proc/{pid}/fd"))
        for tid in _own_tables(pid):
            with contextlib.suppress(OSError):
                held += len(os.listdir(f"/proc/{pid}/task/{tid}/fd"))
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", "rb") as f:
            for _ in f:
                held += 1
                if held > stop_over:
                    return held
    return held


def _own_tables(pid: int) -> list[int]:
    """The threads of ``pid`` whose descriptor table is not its own (``kcmp``, where the
    kernel has it and we may compare; else every thread: shared tables counted again)."""
    with contextlib.suppress(OSError):
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
        if not tids:
            return []
        kcmp = _kcmp()
        if kcmp is None:
            return tids
        return [t for t in tids if kcmp(pid, t, _KCMP_FILES, 0, 0) != 0]
    return []


_KCMP_FILES = 2
_KCMP_NR = {"x86_64": 312, "aarch64": 272}


@functools.lru_cache(maxsize=1)
def _kcmp() -> Callable[..., int] | None:
    """``kcmp(pid1, pid2, type, idx1, idx2)`` (0: the same object), or None where it fails."""
    number = _KCMP_NR.get(os.uname().machine)
    if number is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pid = os.getpid()
    if libc.syscall(number, pid, pid, _KCMP_FILES, 0, 0) != 0:
        return None  # no kcmp here (CONFIG_KCMP), or not allowed
    return lambda *args: libc.syscall(number, *args)


class FileTableGuard:
    """``__call__`` is True once the run's processes (``pids``) hold more than their share of
    the machine's open-file table (then ``fired``). Asked every 50 ms by the I/O loop; counts
    with the run's CPU held (``hold(True)``), released after unless it fired (the run is
    then killed). Under way from its making to ``close``."""

    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        share: int = SHARE,
        hold: Callable[[bool], None] = lambda held: None,
    ) -> None:
        now = table()
        self.pids, self.share, self.hold = pids, share, hold
        self.maximum = None if now is None else now[1]
        self.fired = False
        with _LIVE_LOCK:
            _LIVE.add(id(self))

    def close(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(id(self))

    @property
    def bound(self) -> int | None:
        """Files the run may hold: ``1/share`` of the table, and with more than ``share / 2``
        runs under way in this process or on the machine (every root scorer's), half the
        table among them (never under 4096: an honest run holds tens to a few hundred)."""
        if self.maximum is None:
            return None
        runs = max(len(_LIVE), machine_runs())
        return max(self.maximum // max(self.share, 2 * runs), 4096)

    def watching(self, inner: Callable[[], bool] | None) -> Callable[[], bool]:
        """A watchdog asking this guard, then ``inner`` (the caller's, or None)."""
        return lambda: self() or bool(inner is not None and inner())

    def __call__(self) -> bool:
        bound = self.bound
        if self.fired or bound is None:
            return self.fired
        now = table()
        if now is None or now[0] <= bound:
            return False  # the whole machine holds less than one run's share
        self.hold(True)  # the run opens nothing more while it is counted
        try:
            self.fired = files_held(self.pids(), bound) > bound
        finally:
            if not self.fired:
                self.hold(False)
        return self.fired


def run_guard(run) -> FileTableGuard:
    """The guard of a started ``process.PreparedRun``: its cgroup's processes, its CPU held
    while counted; else its main process and those under it, and those of its own uid or
    marker wherever they lie (round 8: a double fork's orphan, reparented out of the tree,
    held files no count saw)."""
    if run.cgroup is not None:
        return FileTableGuard(run.cgroup.pids, hold=run.cgroup.hold_cpu)
    main, marker, uid = run.proc.pid, run.marker, run.run_uid
    return FileTableGuard(
        lambda: list(dict.fromkeys([*descendants(main), *marked_pids(marker, uid)]))
    )


def descendants(pid: int) -> list[int]:
    """``pid`` and the processes under it (a run without a cgroup to list them)."""
    found, todo = [], [pid]
    while todo and len(found) < 4096:
        parent = todo.pop()
        found.append(parent)
        with contextlib.suppress(OSError, ValueError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
    return found
