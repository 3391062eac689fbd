"""The user a run becomes when the scorer is root: a uid of the run's own, at either level.

Under bubblewrap, setpriv drops to it: a uid shared by every box would share the kernel's
per-user counts (128 inotify instances, message queue bytes, pending signals), so one sample
could use up what a sibling needs. Without bubblewrap there is no mount or PID namespace, so a
program that kept root's uid owned every root-owned file, sysctl, device node, cgroup and
process on the machine (a C++ or shell sample could write anywhere, signal the scorer, leave
its cgroup): the child drops to the run's uid/gid (``child.drop_root``) with no capability,
its working dir its own (0700), its source dir readable by its group only, and nothing else
on the machine its own. The kernel then refuses one sample's signals and writes to another's
processes and files as well. When a fallback run ends, what its uid created and left is
removed: System V IPC objects (no IPC namespace ends with the run) and, without Landlock, its
files in world-writable folders.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "CLAIMS",
    "RUN_UIDS",
    "WORLD_WRITABLE",
    "claims_held",
    "needs_read_all",
    "new_run_uid",
    "own_run_dirs",
    "remove_ipc_objects",
    "remove_left_files",
    "remove_stale_left_files",
    "remove_stale_claims",
    "remove_stale_ipc_objects",
    "remove_tree",
    "release_run_uid",
    "world_writable_folders",
]

# uids (and gids) runs take, one at random per run: above the ranges distributions give users
# (< 60000), /etc/subuid's usual ranges (100000 + 65536 x n for a few thousand users) and
# below 2^31 (some tools read a uid as a signed int)
RUN_UIDS = range(1_900_000_000, 1_900_000_000 + (1 << 24))
# World-writable folders a fallback run without Landlock can leave files in: the usual ones
# (those missing on a machine are skipped), and every other the machine has
# (``world_writable_folders``: PHP's /var/lib/php/sessions, a shared /data/scratch, ...)
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue", "/var/crash")
_SWEEP_DEPTH = 4  # those folders and three levels of world-writable folders under them
# the kernel's own file systems: no folder there takes a file
_KERNEL_FS = frozenset(
    "proc sysfs cgroup cgroup2 devpts debugfs tracefs securityfs bpf configfs fusectl pstore "
    "binfmt_misc autofs efivarfs selinuxfs nsfs hugetlbfs".split()
)
# the search: folders down to 8 levels below / (PHP's sessions are 4 deep; 10,000 folders
# here, 0.7 s, against 62,000 and 3.7 s for all), 200,000 at most (a big dataset tree)
_SEARCH_DEPTH, _SEARCH_VISITS = 8, 200_000
_FOUND: list[tuple[str, ...]] = []
_FOUND_LOCK = threading.Lock()
_RESEARCH_S = 60.0  # the search again (0.7-1.9 s of CPU here) when its list is this old
_REFRESH = {"at": 0.0, "running": False}
# System V IPC objects: /proc/sysvipc's file, its id column, the libc call that removes one
_SYSV_IPC = (("shm", "shmid", "shmctl"), ("msg", "msqid", "msgctl"), ("sem", "semid", "semctl"))
_IPC_RMID = 0
# a folder only, never through a link (the sweeps walk folders other runs may change)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# A file per uid a run holds, locked while it does (root's folder, no run reaches it): runs of
# other scorer processes on the machine never draw it either; a scorer killed before its
# cleanup leaves a file no one locks, taken over by the next draw of its uid
CLAIMS = "/run/reflectioncoder-run-uids"
_IN_USE: dict[int, int | None] = {}  # this process's runs' uids: their claim's descriptor
_IN_USE_LOCK = threading.Lock()


def new_run_uid() -> int:
    """A uid no other run holds until ``release_run_uid``: none of this process's runs, and
    none of another scorer's on this machine (``CLAIMS``). Drawn at random alone, two runs at
    once shared one about once in 16.7 million / (runs at once) draws (31% over 100,000 runs
    64 at a time): their per-user counts and signals, and the first to end removed the
    other's IPC objects and left files (round 7)."""
    with _IN_USE_LOCK:
        while True:
            uid = RUN_UIDS.start + secrets.randbelow(len(RUN_UIDS))
            if uid in _IN_USE:
                continue
            claimed, fd = _claim(uid)
            if claimed:
                _IN_USE[uid] = fd
                return uid


def _claim(uid: int) -> tuple[bool, int | None]:
    """(whether ``uid`` is ours now, the descriptor holding its claim). Where no claim can be
    made (no folder under /run for us), (True, None): this process's own list alone."""
    try:
        os.makedirs(CLAIMS, mode=0o700, exist_ok=True)
        flags = os.O_CREAT | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(f"{CLAIMS}/{uid}", flags, 0o600)
    except OSError:
        return True, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(f"{CLAIMS}/{uid}").st_ino:
            return True, fd
    except OSError:
        pass  # another run holds it, or its file was released while we opened it
    os.close(fd)
    return False, None


def claims_held() -> int:
    """Runs under way on this machine, of every scorer started by root (the claims in
    ``CLAIMS``; a claim a killed scorer left counts until ``remove_stale_claims``): 0 where
    none can be read (a scorer that is not root)."""
    try:
        return len(os.listdir(CLAIMS))
    except OSError:
        return 0


def remove_stale_claims() -> None:
    """Remove the claims no run holds (their scorer was killed before its cleanup), so they
    count in no ``claims_held``. A claim is removed under its lock: a run drawing that uid
    meanwhile finds its file gone (``_claim``'s inode check) and draws again."""
    with contextlib.suppress(OSError):
        for name in os.listdir(CLAIMS):
            path = f"{CLAIMS}/{name}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    os.unlink(path)
            except OSError:
                pass  # held: a run under way
            finally:
                os.close(fd)


def release_run_uid(uid: int | None) -> None:
    """The run's uid is free again (its processes, files and IPC objects are gone)."""
    with _IN_USE_LOCK:
        fd = _IN_USE.pop(uid, None)  # type: ignore[arg-type]
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(f"{CLAIMS}/{uid}")
        os.close(fd)


def _reachable(path: str) -> bool:
    """Whether any user can reach ``path`` (search every directory above it) and read it."""
    real = Path(os.path.realpath(path))
    try:
        for parent in real.parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(real).st_mode
    except OSError:
        return True  # nothing there to reach: no reason to keep a capability
    return bool(mode & (stat.S_IROTH | stat.S_IXOTH))


def needs_read_all(paths: Iterable[str]) -> bool:
    """True when a path the run needs (its interpreter, toolchain, libraries) lies where an
    unprivileged uid cannot reach it (a toolchain under ``/root``, 0700): the run then keeps
    ``CAP_DAC_READ_SEARCH`` (read and search any file, write none)."""
    return not all(_reachable(p) for p in paths)


def own_run_dirs(root: Path, src: Path, work: Path, uid: int) -> None:
    """The run's directories for ``uid``: ``root`` searchable (not listable), ``src``
    root's and readable by the run's group only, ``work`` the run's own."""
    root.chmod(0o711)
    for path in (src, *src.iterdir()):
        os.chown(path, 0, uid)
        path.chmod(0o750 if path.is_dir() else 0o640)
    os.chown(work, uid, uid)
    work.chmod(0o700)


def world_writable_folders() -> tuple[str, ...]:
    """Every folder on the machine where a uid that owns nothing may make a file (others may
    write and search it, and search every folder above it) down to ``_SEARCH_DEPTH`` levels,
    and the usual ones: searched by root for the fallback without Landlock, once, then again
    in the background whenever the list is older than ``_RESEARCH_S`` (``_refresh``). The
    search does not enter a world-writable folder (the sweeps walk those, ``_SWEEP_DEPTH``
    deep) nor the kernel's file systems."""
    found = _FOUND  # one list throughout: a test may rebind the name while a teardown reads it
    with _FOUND_LOCK:
        if not found:
            found.append(_folders())
            _REFRESH.update(at=time.monotonic(), running=False)
        elif not _REFRESH["running"] and time.monotonic() - _REFRESH["at"] > _RESEARCH_S:
            _REFRESH["running"] = True
            threading.Thread(target=_refresh, args=(found,), daemon=True).start()
        return found[0]


def _folders() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*WORLD_WRITABLE, *_search("/")]))


def _refresh(found: list[tuple[str, ...]]) -> None:
    """The search again, off every run's path; then what runs that are over left in any of
    the folders is removed. Round 9: a folder made world-writable after the one search (a
    package installed, a ``chmod``) was in no list: a run's files there stayed for good and
    counted against no ``tmp_mb``; now the disk guard counts them once the list has it (it
    reads the list at each look) and they are removed by the refresh after the run."""
    try:
        folders = _folders()
        with _FOUND_LOCK:
            found[0] = folders
        remove_stale_left_files(folders)
    finally:
        _REFRESH.update(at=time.monotonic(), running=False)


def remove_stale_left_files(roots: Iterable[str]) -> None:
    """Remove what runs that are over left in ``roots``: files of run uids (``RUN_UIDS``)
    that no process has and no run holds, of this scorer or another (a run whose folder was
    not in the list when it ended, or whose scorer was killed). A run holds its uid before
    its first process starts, so a claim is looked for at each file, after it was seen."""
    procs = _live_uids()
    for root in roots:
        with contextlib.suppress(OSError):
            fd = os.open(root, _DIR_FLAGS)
            try:
                _remove_owned(fd, lambda uid: _stale(uid, procs), _SWEEP_DEPTH)
            finally:
                os.close(fd)


def _stale(uid: int, procs: set[int]) -> bool:
    if uid not in RUN_UIDS or uid in procs:
        return False
    with _IN_USE_LOCK:
        if uid in _IN_USE:
            return False
    return not os.path.lexists(f"{CLAIMS}/{uid}")


def _search(top: str) -> list[str]:
    skip, found, todo, visits = _kernel_mounts(), [], [(top, 0)], 0
    while todo and visits < _SEARCH_VISITS:
        folder, depth = todo.pop()
        visits += 1
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if not stat.S_ISDIR(info.st_mode) or entry.path in skip:
                        continue
                    if info.st_mode & stat.S_IWOTH and info.st_mode & stat.S_IXOTH:
                        found.append(entry.path)
                    elif info.st_mode & stat.S_IXOTH and depth + 1 < _SEARCH_DEPTH:
                        todo.append((entry.path, depth + 1))
    return found


def _kernel_mounts() -> set[str]:
    """Mount points of the kernel's own file systems (``/proc/self/mountinfo``)."""
    found = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            mount, _, fs = line.partition(" - ")
            if fs.split()[:1] and fs.split()[0] in _KERNEL_FS:
                found.add(mount.split()[4])
    return found


def remove_left_files(uid: int, roots: Iterable[str] | None = None) -> None:
    """Remove what the run's ``uid`` left in world-writable folders (the fallback without
    Landlock: the uid is the run's alone, so all of it is the run's). Descends only into
    world-writable folders not its own (elsewhere a uid that owns nothing can create nothing),
    ``_SWEEP_DEPTH`` deep at most: a sibling's chain of 0777 folders costs the sweep little.
    ``roots``: the world-writable folders (``world_writable_folders`` by default).

    Root walks folders other runs may change, so each is held open (never through a link) and
    what it checked is removed in that folder by descriptor. Round 9: the sweep removed
    ``folder/name`` by path after checking its owner, and a sibling run that owned the folder
    put a link in its place meanwhile: root followed it and removed a root folder of the same
    name elsewhere (``tests/test_redteam9_sweep.py``)."""
    for root in world_writable_folders() if roots is None else roots:
        with contextlib.suppress(OSError):
            fd = os.open(root, _DIR_FLAGS)
            try:
                _remove_owned(fd, lambda owner: owner == uid, _SWEEP_DEPTH)
            finally:
                os.close(fd)


def _remove_owned(folder: int, left: Callable[[int], bool], depth: int) -> None:
    """The sweep of the open folder ``folder``: the entries whose owner is ``left`` removed,
    world-writable folders not theirs walked ``depth - 1`` levels more."""
    with os.scandir(folder) as listing:
        entries = list(listing)
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)  # fstatat in ``folder``, no link followed
            if left(info.st_uid):
                if stat.S_ISDIR(info.st_mode):
                    _remove_tree_at(folder, entry.name)
                else:
                    os.unlink(entry.name, dir_fd=folder)
            elif depth > 1 and stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH:
                child = os.open(entry.name, _DIR_FLAGS, dir_fd=folder)
                try:
                    _remove_owned(child, left, depth - 1)
                finally:
                    os.close(child)


def remove_tree(path: str | Path) -> None:
    """Remove a folder a run made, however deep, never following a link (the run's own
    folder: root's, in a folder no run may write)."""
    parent = os.open(os.path.dirname(os.path.abspath(path)) or "/", _DIR_FLAGS)
    try:
        _remove_tree_at(parent, os.path.basename(os.path.abspath(path)))
    finally:
        os.close(parent)


def _remove_tree_at(folder: int, name: str) -> None:
    """Remove ``name`` in the open folder ``folder`` and all under it, never following a
    link. ``shutil.rmtree`` takes one Python frame per level: a run 6,000 folders deep raised
    RecursionError in the cleanup thread, and its folder, its IPC objects and its files in
    world-writable folders stayed on the host (round 7); ``rm``'s walk has no such bound, and
    is given the folder through the scorer's descriptor (``/proc/self/fd``), not its path."""
    with contextlib.suppress(RecursionError):
        shutil.rmtree(name, ignore_errors=True, dir_fd=folder)  # never follows links
    with contextlib.suppress(OSError):
        os.stat(name, dir_fd=folder, follow_symlinks=False)
        rm = shutil.which("rm") or "/bin/rm"
        subprocess.run(
            [rm, "-rf", "--one-file-system", "--", f"/proc/self/fd/{folder}/{name}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(folder,),
            check=False,
        )


def remove_ipc_objects(uid: int) -> None:
    """Remove the System V shared memory segments, message queues and semaphore sets that the
    run's ``uid`` created (the fallback: no IPC namespace ends with the run, and they outlive
    their processes, holding host memory until a reboot). By creator: a run can hand an
    object to another owner (``IPC_SET``), never change who created it."""
    _remove_ipc(lambda creator: creator == uid)


def remove_stale_ipc_objects() -> None:
    """The same for runs whose scorer was killed before its cleanup: objects created by a run
    uid (``RUN_UIDS``) no live process has (a run still going keeps its own). Root only."""
    live: list[set[int]] = []  # read only when some object has a run's creator

    def stale(creator: int) -> bool:
        if creator not in RUN_UIDS:
            return False
        if not live:
            live.append(_live_uids())
        return creator not in live[0]

    _remove_ipc(stale)


def _live_uids() -> set[int]:
    uids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/status") as f:
                    uids.add(int(next(x for x in f if x.startswith("Uid:")).split()[1]))
    return uids


def _remove_ipc(created_by) -> None:
    lib = ctypes.CDLL(None, use_errno=True)
    for kind, id_column, remove in _SYSV_IPC:
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = f.read().splitlines()
        except (OSError, ValueError):
            continue  # a kernel without System V IPC
        columns = header.split()
        at_id, at_creator = columns.index(id_column), columns.index("cuid")
        for row in rows:
            fields = row.split()
            if created_by(int(fields[at_creator])):
                # semctl(id, semnum, cmd); shmctl and msgctl (id, cmd, buf)
                args = (0, _IPC_RMID) if kind == "sem" else (_IPC_RMID, None)
                getattr(lib, remove)(int(fields[at_id]), *args)
