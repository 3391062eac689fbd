"""A sandboxed child's set-up between its start and the exec of its command: SIGINT back to
its default, the run's cgroup entered, first in line for the OOM killer, death with the
scorer, the per-process limits, and (the fallback level) the seccomp filter. Standard library only.

It runs either in the forked child (``spawn.preexec``, when the scorer is small) or as a
script in a fresh interpreter that then execs the command (``python -I -S child.py CONFIG --
argv...``), when the scorer holds so much memory (MBPP+'s expected outputs: 1.7 GB) that a fork
copying its page tables costs more than starting Python (146 ms against about 15 ms, measured).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal's enums cost 3 ms of each start (enum, re)
import ctypes
import os
import resource
import sys

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP, _PR_SET_SECUREBITS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 24, 28, 47, 2
# SECBIT_NO_SETUID_FIXUP and its lock: the uid change keeps the capabilities (then lowered to
# the one kept) and access() uses them
_SECBITS_KEEP_FOR_ACCESS = (1 << 2) | (1 << 3)
CAP_DAC_READ_SEARCH = 2
_CAP_VERSION_3 = 0x20080522  # linux/capability.h: two 32-bit words per set
OOM_SCORE_ADJ = "1000"  # the most: killed first
_SIG_DFL, _SIG_IGN = 0, 1  # C's signal dispositions (signal.h)


def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    lib.signal.restype = ctypes.c_void_p
    return lib


def apply(config: dict, lib: ctypes.CDLL, install_seccomp, restrict_files) -> None:
    """``config``: ``cgroup_procs`` (files to write our pid to), ``memory``, ``cpu``,
    ``file_size``, ``open_files``, ``nproc`` (None: not set), ``uid`` (the fallback started
    by root: the run's own uid and gid to drop to; None: stay), ``read_all`` (keep
    ``CAP_DAC_READ_SEARCH``), ``group`` (its one supplementary group, or None), ``fs_read``
    and ``fs_write`` (the fallback: what Landlock lets the run read and change,
    ``landlock.restrict_files``; None: no Landlock), ``seccomp`` (hex of a filter, or None).
    SIGINT: a held one is discarded (ignoring a signal drops it), then it is unblocked with
    its default action (the scorer's pool threads block it)."""
    lib.signal(signal.SIGINT, _SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    lib.signal(signal.SIGINT, _SIG_DFL)
    for procs in config["cgroup_procs"]:
        with open(procs, "w") as f:
            f.write("0")
    # the kernel's first choice when memory runs out, above the scorer and the rest of the
    # machine (a box's tmpfs files count for no process: without this, a limit on the
    # scorer's own cgroup killed the scorer). Set by root, the program cannot lower it.
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(OOM_SCORE_ADJ)
    # while root (if it is): it opens every allowed path
    if config["fs_read"] is not None and not restrict_files(
        config["fs_read"], config["fs_write"], lib
    ):
        raise OSError("sandbox: Landlock could not be applied")
    if config["uid"] is not None:
        drop_root(config["uid"], bool(config["read_all"]), lib, config["group"])
    # after the drop: a change of uid clears it
    lib.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    cpu = config["cpu"]
    for limit, value in (
        (resource.RLIMIT_AS, (config["memory"], config["memory"])),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (config["file_size"], config["file_size"])),
        (resource.RLIMIT_NOFILE, (config["open_files"], config["open_files"])),
        (resource.RLIMIT_CORE, (1, 1)),  # no dump, to a file or a pipe (syscall_filter.RLIMIT_CORE)
    ):
        resource.setrlimit(limit, value)
    if config["nproc"] is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (config["nproc"], config["nproc"]))
    seccomp = config["seccomp"]
    if seccomp is not None and not install_seccomp(bytes.fromhex(seccomp)):
        raise OSError("sandbox: the seccomp filter could not be installed")


def drop_root(uid: int, read_all: bool, lib: ctypes.CDLL, group: int | None = None) -> None:
    """Root becomes ``uid``/gid ``uid`` with no supplementary group but ``group`` (the runs'
    own, ``searchgrant``: search on the folders leading to a toolchain under a 0700 home) and
    no capability in any set (bounding included), so no root-owned file, sysctl, device
    node, cgroup or process is its own. ``read_all``: ``CAP_DAC_READ_SEARCH`` alone is kept
    (ambient, so the program exec'd has it) for a toolchain no other user can reach (under a
    0700 ``/root``) where no ACL could give the group search, and ``access()`` counts it
    (``SECBIT_NO_SETUID_FIXUP``: compilers look for their tools so)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if not (read_all and cap == CAP_DAC_READ_SEARCH) and lib.prctl(
            _PR_CAPBSET_DROP, cap, 0, 0, 0
        ):
            raise OSError(ctypes.get_errno(), f"sandbox: cannot drop capability {cap}")
    if read_all and lib.prctl(_PR_SET_SECUREBITS, _SECBITS_KEEP_FOR_ACCESS, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "sandbox: cannot set the securebits")
    os.setgroups([] if group is None else [group])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if not read_all:
        return  # a change from uid 0 cleared every capability
    bit = 1 << CAP_DAC_READ_SEARCH
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(bit, bit, bit, 0, 0, 0)  # effective, permitted, inheritable
    if lib.capset(header, data) or lib.prctl(
        _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0
    ):
        raise OSError(ctypes.get_errno(), "sandbox: cannot keep CAP_DAC_READ_SEARCH")


_INTS = ("memory", "cpu", "file_size", "open_files", "nproc", "uid", "read_all", "group")
_PATH_LISTS = ("fs_read", "fs_write")


def to_argv(config: dict) -> list[str]:
    """``config`` as this script's arguments (``key=value``; no json: its import costs 2 ms of
    every start). Cgroup paths are ours (no ``:``); ``-`` is None."""
    args = [f"{k}={'-' if config[k] is None else config[k]}" for k in (*_INTS, "seccomp")]
    for key in _PATH_LISTS:  # one argument each, the paths a line apart
        args.append(f"{key}=" + ("-" if config[key] is None else "\n".join(config[key])))
    return [*args, "cgroup_procs=" + ":".join(config["cgroup_procs"])]


def from_argv(args: list[str]) -> dict:
    raw = dict(a.split("=", 1) for a in args)
    config: dict = {k: None if raw[k] == "-" else int(raw[k]) for k in _INTS}
    config["seccomp"] = None if raw["seccomp"] == "-" else raw["seccomp"]
    config["cgroup_procs"] = [p for p in raw["cgroup_procs"].split(":") if p]
    for key in _PATH_LISTS:
        config[key] = None if raw[key] == "-" else [p for p in raw[key].split("\n") if p]
    return config


def _main() -> None:  # runs as a script: child.py KEY=VALUE... -- ARGV...
    split = sys.argv.index("--")
    config, argv = from_argv(sys.argv[1:split]), sys.argv[split + 1 :]

    # imported before apply: Landlock then refuses to read this folder
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    install_seccomp = restrict_files = None
    if config["seccomp"] is not None:  # guards only where a filter is installed here
        from syscall_filter import install_seccomp
    if config["fs_read"] is not None:
        from landlock import restrict_files

    try:
        apply(config, libc(), install_seccomp, restrict_files)
        os.execvp(argv[0], argv)
    except OSError as exc:  # the scorer reads this as the run's failure to start
        sys.stderr.write(f"sandbox: cannot start {argv[0]}: {exc}\n")
        os._exit(127)


if __name__ == "__main__":
    _main()
