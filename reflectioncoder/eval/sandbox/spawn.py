"""The parent's half of starting a sandboxed child: what ``child.apply`` sets up between fork
and exec (plain data, ``child_config``), how it runs (in the forked child, or in a fresh
interpreter when the scorer is big), the run's environment and its source files.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from reflectioncoder.eval.sandbox import child, landlock, syscall_filter
from reflectioncoder.eval.sandbox.records import Limits
from reflectioncoder.eval.sandbox.teardown import MARKER_ENV

__all__ = [
    "CHILD_SCRIPT",
    "big_scorer",
    "child_config",
    "child_env",
    "ctrl_c_held",
    "preexec",
    "write_files",
]

# Resident memory above which a child is started through ``child.py`` in a fresh interpreter
# (vfork + exec: no page tables copied) instead of a fork running ``child.apply`` (measured:
# fork + exec of /bin/true from a 1.7 GB scorer 146 ms, from a 55 MB one about 20 ms).
_FORK_RSS = 256 << 20
CHILD_SCRIPT = str(Path(__file__).with_name("child.py"))


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold SIGINT in this thread while forking a sandboxed child. The child runs Python's
    after-fork hooks before ``setsid`` takes it out of the terminal's process group; a Ctrl-C
    landing there raised KeyboardInterrupt inside ``threading._after_fork`` and printed a
    traceback on the user's terminal (1 run in 8 of tests/test_cli_errors.py's Ctrl-C test).
    The child drops a held SIGINT and unblocks it once in its own session (``preexec``)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def child_config(
    limits: Limits,
    cpu_s: float,
    procs: list[str],
    seccomp: bytes | None,
    user: tuple[int | None, bool, int | None],
    drop: bool,
    files: tuple[list[str], list[str]] | None,
) -> dict:
    """What ``child.apply`` sets up (plain data: it may travel as a command-line argument).
    ``user``: (the run's own uid, keep CAP_DAC_READ_SEARCH, its supplementary group or None),
    uid None where it has none;
    ``drop``: the child drops to it (else setpriv does, in the box); ``files``: what
    Landlock lets the run read and change (None: no Landlock)."""
    uid, read_all, group = user
    if uid is not None:  # its own uid: RLIMIT_NPROC counts this run's processes alone
        nproc = limits.max_processes + 8
    else:  # root ignores RLIMIT_NPROC (the cgroup covers that case); the limit counts ALL of
        # the user's processes and threads, hence the headroom
        nproc = None if os.geteuid() == 0 else limits.max_processes + 1024
    return {
        "cgroup_procs": procs,
        "memory": limits.memory_mb << 20,
        "cpu": int(cpu_s) + 1,  # per process; the cgroup's CPU clock is the real limit
        "file_size": limits.file_size_mb << 20,
        "open_files": limits.open_files,
        "nproc": nproc,
        "uid": uid if drop else None,
        "read_all": int(read_all and drop),
        "group": group if drop else None,
        "fs_read": None if files is None else files[0],
        "fs_write": None if files is None else files[1],
        "seccomp": None if seccomp is None else seccomp.hex(),
    }


def preexec(config: dict):
    """Runs in the forked child between fork and exec: ``child.apply``."""
    lib = child.libc()

    def apply() -> None:
        child.apply(config, lib, syscall_filter.install_seccomp, landlock.restrict_files)

    return apply


def big_scorer() -> bool:
    """Whether this process is so big that forking it costs more than starting Python."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") > _FORK_RSS
    except (OSError, ValueError, IndexError):
        return False


def write_files(src: Path, files: dict[str, str | bytes]) -> None:
    """The run's files, readable by the box's unprivileged uid; plain names only."""
    for name, content in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"files: {name!r} must be a plain file name")
        data = content.encode() if isinstance(content, str) else content
        (src / name).write_bytes(data)
        (src / name).chmod(0o644)


def child_env(
    home: str, tmp: str, marker: str, extra: dict[str, str] | None, path: str
) -> dict[str, str]:
    """The whole environment of the run (nothing of ours leaks in: ``path`` is the box's
    fixed PATH, ``bwrap.box_path``), ``extra`` last."""
    child_env = {
        "PATH": path,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": tmp,
        "HOME": home,
        MARKER_ENV: marker,
    }
    child_env.update(extra or {})
    return child_env
