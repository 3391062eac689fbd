"""Locks that torch's extension builds left behind. DeepSpeed JIT-builds its ops (the CPU
collectives op, CPU Adam) through ``torch.utils.cpp_extension.load``, which takes a ``lock`` file
in the op's build folder and, in every other process, waits while the file is there: forever,
without a word, when a build was killed mid-way (a run stopped during its first minutes). Two
test runs hung so on 2026-12-06. Before DeepSpeed starts, a rank waits here instead: a lock
a build of this machine works under is left to it; one that no process of this machine builds
under and whose folder stayed unchanged for ``STALE_S`` (a build on another machine sharing the
folder writes to it) is removed, with a line saying so."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import time

__all__ = ["STALE_S", "clear_stale_build_locks", "extension_build_locks"]

STALE_S = 600.0  # no build of an op leaves its folder unchanged this long (1-6 min on 2 cores)
log = logging.getLogger("reflectioncoder.train")


def extension_build_locks() -> list[str]:
    """The build locks present in torch's extension folders (``TORCH_EXTENSIONS_DIR``/<op>, or
    the default root's <python>_<accelerator>/<op>)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return sorted(glob.glob(os.path.join(glob.escape(root), "*", "lock")))
    from torch.utils.cpp_extension import get_default_build_root

    return sorted(glob.glob(os.path.join(glob.escape(get_default_build_root()), "*", "*", "lock")))


def clear_stale_build_locks(say: bool = True, poll_s: float = 1.0) -> None:
    """Return once no lock in torch's extension folders would stop this process for good:
    each is gone, held by a build of this machine, or was stale and is removed (by one rank,
    which says so). ``say``: log that this process waits (local rank 0)."""
    for lock in extension_build_locks():
        _wait_or_remove(lock, say, poll_s)


def _wait_or_remove(lock: str, say: bool, poll_s: float) -> None:
    folder, told = os.path.dirname(lock), False
    while True:
        try:
            made = os.stat(lock)
        except FileNotFoundError:
            return  # the build ended (or another rank removed it)
        if _builds_in(folder):
            return  # torch waits for a live build as it should
        quiet = time.time() - _last_change(folder)
        if quiet >= STALE_S:
            if _remove_if_same(lock, made):
                log.warning(
                    "removed %s: a build of that op stopped mid-way and left it (made %s, "
                    "no process builds there); torch would wait on it forever",
                    lock,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(made.st_mtime)),
                )
            return
        if say and not told:
            log.warning(
                "waiting on %s (no process of this machine builds there): a build on another "
                "machine sharing the folder, or one that stopped; removed once the folder has "
                "not changed for %d minutes",
                lock,
                STALE_S // 60,
            )
            told = True
        time.sleep(poll_s)


def _builds_in(folder: str) -> bool:
    """Whether a build of this machine runs in ``folder``: torch runs ninja there (its
    compilers are ninja's children), from just after writing build.ninja to the end."""
    real = os.path.realpath(folder)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() != "ninja":
                    continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if cwd == real or cwd.startswith(real + os.sep):
                return True
    return False


def _last_change(folder: str) -> float:
    times = [os.stat(folder).st_mtime]
    for entry in os.scandir(folder):
        with contextlib.suppress(OSError):
            times.append(entry.stat(follow_symlinks=False).st_mtime)
    return max(times)


def _remove_if_same(lock: str, seen: os.stat_result) -> bool:
    """Remove ``lock`` if it is still the file seen stale, not a build's new one: the ranks of a
    launch check and remove one at a time (a lock on the folder), and a stale lock has no
    holder to remove it meanwhile."""
    fd = os.open(os.path.dirname(lock), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            now = os.stat(lock)
            if (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
                os.remove(lock)
                return True
        return False
    finally:
        os.close(fd)  # releases the flock
