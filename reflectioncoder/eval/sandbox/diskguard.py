"""The fallback's bound on what a run stores on the host's disk while it runs.

Under bubblewrap a run's files live in its box's tmpfs (``Limits.tmp_mb``), counted by its
memory limit, inodes too. The fallback has no mount of its own: its working dir (and, without
Landlock, the world-writable folders) are on the host's file system, where RLIMIT_FSIZE bounds
one file (64 MiB) but not how many. A sample made 400,000 files in 17 s, and one can fill the
host's disk, failing every other writer on the machine (a sibling's compiler, the scorer, a
training job's checkpoint) until it ends. ``DiskGuard`` measures the run from outside, between
the I/O loop's reads, and stops it past ``tmp_mb`` of blocks or ``tmp_mb x FILES_PER_MB``
files: its working dir walked by descriptor (no path too long, no link followed), its files
in the world-writable folders (``roots``: owned by the run's uid), and files it deleted but
holds open or mapped (found through ``/proc/<pid>/fd`` and ``maps`` of its processes).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterable

from reflectioncoder.eval.sandbox.runuser import world_writable_folders

__all__ = ["FILES_PER_MB", "DiskGuard", "fallback_guard"]

FILES_PER_MB = 16  # files (and folders) a run may hold per MiB of tmp_mb: 8192 for 512 MiB
# (Go's build, the most, holds about 450 in its working dir)
_MIN_GAP_S = 0.05  # walks at most every 50 ms, and at most 1/_COST_SHARE of the time, but
_COST_SHARE = 20  # at least every _MAX_GAP_S: a run whose processes padded their mappings made
_MAX_GAP_S = 0.25  # a look take most of a second, and wrote on until the next (round 7)
_SHARED_DEPTH = 4  # world-writable folders walked this deep (``runuser.remove_left_files``)
_SHARED_VISITS = 20_000  # entries of others' looked at in them per walk, at most
_MAX_DEPTH = 128  # folders open at once in a walk (one a level): a run nesting deeper is over
# a folder only (O_DIRECTORY: a FIFO swapped in is ENOTDIR at once), never through a link
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DiskGuard:
    """``__call__`` is True once the run holds more than ``tmp_mb`` MiB of blocks or
    ``tmp_mb x FILES_PER_MB`` files (then ``fired``). ``work``: the run's working dir (all of
    it counts); ``uid``: the run's own uid, whose files count in ``roots`` (world-writable
    folders, or what returns them: read at each look, as the list may grow meanwhile); ``pids``:
    the run's processes now (their deleted, still open or mapped files count too); ``hold``:
    the run's CPU held (True) or given back while it is looked at."""

    def __init__(
        self,
        work: str,
        tmp_mb: int,
        pids: Callable[[], Iterable[int]],
        uid: int | None = None,
        roots: Iterable[str] | Callable[[], tuple[str, ...]] = (),
        hold: Callable[[bool], None] = lambda held: None,
    ) -> None:
        self.work, self.pids, self.hold = work, pids, hold
        self.budget, self.max_files = tmp_mb << 20, tmp_mb * FILES_PER_MB
        fixed = () if uid is None or callable(roots) else tuple(roots)
        self.uid, self.roots_now = uid, roots if uid is not None and callable(roots) else None
        self.roots, self.devices = fixed, _devices([work, *fixed])
        self.next_walk = 0.0
        self.fired = False
        self.used = self.files = self.visits = 0

    def watching(self, inner: Callable[[], bool] | None) -> Callable[[], bool]:
        """A watchdog asking this guard, then ``inner`` (the caller's, or None)."""
        return lambda: self() or bool(inner is not None and inner())

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.fired or now < self.next_walk:
            return self.fired
        self.used = self.files = 0
        self.hold(True)  # it writes nothing more while it is looked at
        try:
            self.fired = not (self._walk_work() and self._walk_roots() and self._open_deleted())
        finally:
            if not self.fired:
                self.hold(False)
        cost = time.monotonic() - now
        self.next_walk = now + min(max(_MIN_GAP_S, _COST_SHARE * cost), _MAX_GAP_S)
        return self.fired

    def _add(self, info: os.stat_result) -> bool:
        """Count one file; False once over a bound."""
        self.used += info.st_blocks * 512
        self.files += 1
        return self.used <= self.budget and self.files <= self.max_files

    def _walk_work(self) -> bool:
        try:
            top = os.open(self.work, _DIR_FLAGS)
        except OSError:
            return True  # removed already: the run is over
        return self._walk(top, lambda info: True, depth=None)

    def _walk_roots(self) -> bool:
        if self.roots_now is not None and self.roots_now() is not self.roots:
            self.roots = self.roots_now()  # a refreshed search (``runuser._refresh``)
            self.devices = _devices([self.work, *self.roots])
        for root in self.roots:
            with contextlib.suppress(OSError):
                top = os.open(root, _DIR_FLAGS)
                self.visits = 0
                if not self._walk(top, lambda info: info.st_uid == self.uid, _SHARED_DEPTH):
                    return False
        return True

    def _walk(self, top: int, counts: Callable[[os.stat_result], bool], depth: int | None) -> bool:
        """Walk from the open folder ``top`` (closed here) depth first, one descriptor open per
        level: a folder that ``counts`` is walked whole (everything in it is the run's),
        another (world-writable, not the run's) only ``depth`` levels deep. A run nesting
        deeper than ``_MAX_DEPTH`` is over its bound. Before (round 7), every subfolder found
        was opened at once: 2,000 empty folders held 2,000 of the scorer's descriptors, and
        under the usual limit of 1,024 a sibling's start failed (``Too many open files``)."""
        stack: list[tuple[int, list | None]] = [(top, None)]
        try:
            stack[-1] = (top, self._scan(top, counts, depth))
            while stack:
                fd, todo = stack[-1]
                if todo is None or (todo and len(stack) >= _MAX_DEPTH):
                    return False
                if not todo:
                    os.close(stack.pop()[0])
                    continue
                name, rule, left = todo.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # gone, or not a folder any more
                stack.append((child, None))
                stack[-1] = (child, self._scan(child, rule, left))
            return True
        finally:
            for fd, _ in stack:
                os.close(fd)

    def _scan(self, fd: int, rule: Callable[[os.stat_result], bool], left: int | None):
        """Count what the open folder ``fd`` holds under ``rule``; returns its subfolders to
        walk, (name, rule, levels left), or None once over a bound."""
        todo = []
        try:
            for entry in os.scandir(fd):
                try:  # one gone entry (a churn of temp files) hides none after it
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                mine = rule(info)
                if mine and not self._add(info):
                    return None
                if not stat.S_ISDIR(info.st_mode):
                    continue
                if mine:
                    todo.append((entry.name, lambda i: True, None))
                elif left is not None and left > 1 and info.st_mode & stat.S_IWOTH:
                    self.visits += 1
                    if self.visits <= _SHARED_VISITS:
                        todo.append((entry.name, rule, left - 1))
        except OSError:
            pass  # gone, or not a folder any more
        return todo

    def _open_deleted(self) -> bool:
        """Files the run deleted but holds open, or mapped, on the file systems it writes to:
        their blocks stay taken until the last process lets go."""
        seen: set[tuple[int, int]] = set()
        for pid in self.pids():
            for path in _deleted_files(pid):
                with contextlib.suppress(OSError):
                    info = os.stat(path)
                    key = (info.st_dev, info.st_ino)
                    if key not in seen and info.st_dev in self.devices:
                        seen.add(key)
                        if stat.S_ISREG(info.st_mode) and not self._add(info):
                            return False
        return True


def fallback_guard(run) -> DiskGuard | None:
    """The guard of a fallback run (``process.PreparedRun``, started): its working dir, its
    cgroup's processes (else its main one), and without Landlock the world-writable folders."""
    if run.root is None or run.proc is None:
        return None
    pids = run.cgroup.pids if run.cgroup is not None else [run.proc.pid].copy
    hold = run.cgroup.hold_cpu if run.cgroup is not None else lambda held: None
    shared = () if run.isolation.landlock or run.run_uid is None else world_writable_folders
    return DiskGuard(str(run.root / "work"), run.tmp_mb, pids, run.run_uid, shared, hold)


def _deleted_files(pid: int) -> list[str]:
    """``/proc`` paths that open the deleted files ``pid`` holds: its descriptors, and its
    mappings (``map_files``, readable by root)."""
    found = []
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):
        for name in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{name}").endswith(" (deleted)"):
                    found.append(f"{fd_dir}/{name}")
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            if line.endswith(b" (deleted)\n"):
                found.append(f"/proc/{pid}/map_files/{line.split(maxsplit=1)[0].decode()}")
    return found


def _devices(paths: Iterable[str]) -> set[int]:
    """The file systems of ``paths`` (where the run can make files)."""
    found = set()
    for path in paths:
        with contextlib.suppress(OSError):
            found.add(os.stat(path).st_dev)
    return found
