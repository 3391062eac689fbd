"""What isolation this machine gives every run, probed once and named in one typed record.

``isolation()`` is the one place that decides: bubblewrap or the rlimits fallback (or what
``REFLECTIONCODER_SANDBOX=auto|bwrap|rlimits`` forces), the seccomp filter, the cgroup
controllers and the clock time limits count. Everything else reads the record's fields.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from reflectioncoder.errors import UserError
from reflectioncoder.eval.sandbox import bwrap, landlock, runuser, syscall_filter
from reflectioncoder.eval.sandbox.cgroup import CgroupLayout, cgroup_layout

__all__ = [
    "Isolation",
    "bwrap_works",
    "isolation",
    "isolation_level",
    "not_guaranteed",
    "seccomp_available",
]

LEVELS = ("auto", "bwrap", "rlimits")
CORE_PATTERN = "/proc/sys/kernel/core_pattern"
OVERCOMMIT = "/proc/sys/vm/overcommit_memory"
_FALLBACK_GAPS = (
    "memory is limited per process (RLIMIT_AS), not per sample",
    "files a run writes go to the host's disk until it ends (up to tmp_mb, measured every 50 ms "
    "from outside: what it writes within one interval may pass it)",
    "files and /proc are guarded by a Python audit hook (sockets by the seccomp filter): "
    "native code (a C extension) can step around the hook",
)
_READS = {
    False: "host files outside the hidden data and cache directories can be read",
    True: "files under the system's, Python's and the toolchain's directories can be read "
    "(Landlock), the data and the cache too where they lie inside those",
}
_NATIVE_READS = {
    False: "they can write to world-writable folders (/tmp, /var/tmp, /dev/shm), open the "
    "host's terminals (/dev/ptmx) and read what any user can (where the toolchain sits "
    "under a home no other user can enter: what others may read beneath it, or every file "
    "where no ACL can give the runs' group search and CAP_DAC_READ_SEARCH is kept)",
    True: "Landlock lets them read only the system's, Python's and the toolchain's "
    "directories and change only their working dir",
}


def _native_gap(landlocked: bool, devices: bool) -> str:
    reads = _NATIVE_READS[landlocked]
    if devices:  # the devices cgroup refuses the terminals (every node but the harmless ones)
        reads = reads.replace(", open the host's terminals (/dev/ptmx)", "")
    return (
        "programs that are not Python (MultiPL-E compiled languages, shell) have no /proc guard "
        "beyond their user's rights (started by root: a uid of the run's own, no capability; "
        "otherwise the caller's uid) with rlimits, a process group, the cgroup and the seccomp "
        "filter (no socket, mount, namespace, ptrace); " + reads
    )


@dataclass(frozen=True)
class Isolation:
    """What is in force for every run: ``bwrap`` (bubblewrap's namespaces, host uid
    ``host_uid``, no capability, a minimal read-only file system) or the ``rlimits`` fallback
    (programs run as the caller, or as a uid of each run's own when the caller is root;
    Python programs behind the audit guard); ``seccomp``: the
    kernel-call filter is installed; ``cgroup``: where runs' cgroups are made (None: none)."""

    bwrap: bool
    seccomp: bool
    # the host uid programs run as under bwrap; None: a uid of each run's own (started by
    # root, ``runuser``), or the fallback's caller
    host_uid: int | None
    cgroup: CgroupLayout | None
    # the fallback: Landlock lets each run read only what bubblewrap would bind and change
    # only its working dir (``landlock``); False under bwrap (its mounts do that)
    landlock: bool = False

    @property
    def audit_guard(self) -> bool:
        """Python programs install the in-process audit guard (the fallback's file guard)."""
        return not self.bwrap

    @property
    def device_cgroup(self) -> bool:
        """Each run's device nodes are limited by a v1 ``devices`` cgroup: the fallback where
        Landlock does not limit them (bubblewrap binds only the harmless ones)."""
        return not self.bwrap and not self.landlock and bool(self.cgroup and self.cgroup.devices)

    @property
    def cpu_clock(self) -> bool:
        """Time limits count CPU seconds of the run's cgroup (else the wall clock)."""
        return self.cgroup is not None and "cputime" in self.cgroup.parents

    @property
    def name(self) -> str:
        """The level as results print it, e.g. ``bwrap(uid=per-run,host-uid=per-run,caps=none,
        userns=none,seccomp,fs=minimal-ro)+cgroup-v1(cpu,cputime,memory,pids)+time=cpu``."""
        filtered = ",seccomp" if self.seccomp else ""
        if self.bwrap:
            uid = (
                "per-run,host-uid=per-run"
                if self.host_uid is None
                else (f"{bwrap.SANDBOX_UID},host-uid={self.host_uid}")
            )
            level = f"bwrap(uid={uid},caps=none,userns=none{filtered},fs=minimal-ro)"
        else:
            who = "run-uid" if os.geteuid() == 0 else "caller-uid"
            files = ",landlock" if self.landlock else ""
            level = f"rlimits({who}{files},audit-guard{filtered})"
        if self.cgroup is not None:
            level += "+" + self.cgroup.describe(self.device_cgroup)
        return level + ("+time=cpu" if self.cpu_clock else "+time=wall")

    def not_guaranteed(self, python_only: bool = True) -> list[str]:
        """What this level cannot promise (for Python programs only, or for programs in any
        language: MultiPL-E); the result file lists it, docs/evaluation.md has the table."""
        return _gaps(self.bwrap, python_only, self.landlock, self.device_cgroup)


def _gaps(in_bwrap: bool, python_only: bool, landlocked: bool, devices: bool) -> list[str]:
    if in_bwrap:
        return _host_gaps()
    gaps = [*_host_gaps(), _READS[landlocked], *_FALLBACK_GAPS]
    if not python_only:
        gaps.append(_native_gap(landlocked, devices))
    elif not seccomp_available():
        gaps.append("new processes are refused from Python only (no seccomp here)")
    return gaps


def _host_gaps() -> list[str]:
    """What no level can promise on this host, read now (``_core_socket_gap``,
    ``_strict_commit_gap``)."""
    return [gap for gap in (_core_socket_gap(), _strict_commit_gap()) if gap]


def _core_socket_gap() -> str:
    """A ``kernel.core_pattern`` that sends dumps to a socket (``@path``, Linux 6.16+) is
    connected by the kernel on every crash, whatever RLIMIT_CORE is (RLIMIT_CORE 1 stops the
    file and pipe patterns), so a crashing sample's memory reaches the service there; nothing a
    process keeps across exec stops it."""
    try:
        pattern = Path(CORE_PATTERN).read_text().strip()
    except OSError:
        return ""
    if not pattern.startswith("@"):
        return ""
    return (
        f"crash dumps go to a socket (kernel.core_pattern {pattern.split()[0]}): a crashing "
        "program's memory reaches the service listening there, whatever its limits"
    )


def _strict_commit_gap() -> str:
    """Strict overcommit (``vm.overcommit_memory`` 2): the machine's commit limit is one count,
    charged at each writable private mapping whether or not a page is touched; no cgroup bounds
    it. Round 7: a run's processes could each commit their address-space limit; round 8: a
    run is stopped past its memory limit (``commitguard``), and what is left is named."""
    try:
        mode = Path(OVERCOMMIT).read_text().strip()
    except OSError:
        return ""
    if mode != "2":
        return ""
    return (
        "strict overcommit (vm.overcommit_memory 2): a run may commit up to its memory limit "
        "of the machine's one commit limit without using a page (stopped past it, within a "
        "50 ms look), and the runs under way the sum of their limits, failing other "
        "processes' allocations (the scorer's, a sibling sample's) while they run"
    )


def isolation() -> Isolation:
    """What runs get here now (``REFLECTIONCODER_SANDBOX`` read on each call; each level is
    probed once per process)."""
    wanted = os.environ.get("REFLECTIONCODER_SANDBOX", "auto")
    if wanted not in LEVELS:
        raise ValueError(f"REFLECTIONCODER_SANDBOX must be auto, bwrap or rlimits, got {wanted!r}")
    return _decide(wanted)


@lru_cache(maxsize=len(LEVELS))
def _decide(wanted: str) -> Isolation:
    if os.geteuid() == 0:  # what the runs of a scorer killed before its cleanup left
        runuser.remove_stale_ipc_objects()
        runuser.remove_stale_claims()  # each would shrink every run's share of open files
    if wanted == "bwrap" and not bwrap_works():
        raise UserError(
            f"bubblewrap cannot run here: {_why_no_bwrap()}", field="REFLECTIONCODER_SANDBOX=bwrap"
        )
    if wanted != "rlimits" and bwrap_works():
        host_uid = None if os.geteuid() == 0 else os.geteuid()
        filtered = syscall_filter.seccomp_filter(os.uname().machine, None) is not None
        return Isolation(True, filtered, host_uid, cgroup_layout())
    return Isolation(False, seccomp_available(), None, cgroup_layout(), landlock.abi() >= 1)


def _why_no_bwrap() -> str:
    """What stops bubblewrap here, in the words a user can act on."""
    if bwrap.bwrap_path() is None:
        return "it is not installed (apt-get install bubblewrap), or unset it for auto"
    if os.geteuid() == 0 and not os.path.exists(bwrap.setpriv_path()):
        return "running as root needs setpriv (apt-get install util-linux), or unset it for auto"
    return (
        "it cannot create its namespaces (a container that refuses user namespaces?); "
        "unset it for auto, which falls back to the rlimits level"
    )


def isolation_level() -> str:
    """``isolation().name``: exactly what runs get here, as results print it."""
    return isolation().name


def not_guaranteed(level: Isolation | str, python_only: bool = True) -> list[str]:
    """What ``level`` (the record, or a level's name as results print it) cannot promise."""
    if isinstance(level, Isolation):
        return level.not_guaranteed(python_only)
    name = level.partition("(")[0]
    landlocked = ",landlock," in level.partition(")")[0] + ","
    devices = "devices" in level.partition("+cgroup-")[2].partition(")")[0]
    return _gaps(name == "bwrap", python_only, landlocked, devices)


@lru_cache(maxsize=1)
def bwrap_works() -> bool:
    """True when bubblewrap can create the namespaces we ask for on this machine."""
    exe = bwrap.bwrap_path()
    if exe is None:
        return False
    if os.geteuid() == 0 and not os.path.exists(bwrap.setpriv_path()):
        return False  # root without setpriv: the program would keep host root's uid
    fd = bwrap.box_seccomp_fd()
    with tempfile.TemporaryDirectory(prefix="rc-probe-") as tmp:
        os.chmod(tmp, 0o755)
        argv = bwrap.bwrap_argv(exe, Path(tmp), hide=(), ro_binds=(), seccomp_fd=fd)
        try:
            proc = subprocess.run(
                [*argv, "/bin/true"],
                capture_output=True,
                timeout=20,
                pass_fds=() if fd is None else (fd,),
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        finally:
            if fd is not None:
                os.close(fd)
    return proc.returncode == 0


@lru_cache(maxsize=1)
def seccomp_available() -> bool:
    """Whether the fallback's seccomp filter (new processes, ptrace, mounts...) can be
    installed here: a machine we have syscall tables for, and a kernel with seccomp."""
    if syscall_filter.seccomp_filter(os.uname().machine, 1) is None:
        return False
    try:
        return "Seccomp:" in Path("/proc/self/status").read_text()
    except OSError:
        return False
