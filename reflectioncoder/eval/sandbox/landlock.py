"""Landlock (the kernel's unprivileged file-access sandbox, Linux 5.13+) for the fallback
level: the run's process tree may read and run only what bubblewrap would have bound (the
system's directories, a few ``/etc`` files, Python, the toolchain's binds, the run's source
dir, ``/proc``) and change only its working dir and the harmless devices. Landlock holds for
root and for ``CAP_DAC_READ_SEARCH`` alike; with ABI 6 it also refuses signals to any
process outside the run. Standard library only (the child's set-up runs it).
"""

from __future__ import annotations

import ctypes
import os
import stat

__all__ = ["DEVICES", "abi", "restrict_files"]

# the devices a program may read and write (bubblewrap binds the same ones)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
_SYS_LANDLOCK = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create, add, restrict
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_CREATE_RULESET_VERSION = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_SCOPE_SIGNAL = 1 << 1  # ABI 6: no signal to a process outside the run's domain
_PR_SET_NO_NEW_PRIVS = 38


def abi(lib: ctypes.CDLL | None = None) -> int:
    """The kernel's Landlock ABI version (0: none, or a machine we have no numbers for)."""
    numbers = _SYS_LANDLOCK.get(os.uname().machine)
    if numbers is None:
        return 0
    lib = lib or ctypes.CDLL(None, use_errno=True)
    return max(0, lib.syscall(numbers[0], None, 0, _LANDLOCK_CREATE_RULESET_VERSION))


def _handled_fs(version: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute ... make_sym
    for since, right in ((2, 1 << 13), (3, _FS_TRUNCATE), (5, _FS_IOCTL_DEV)):
        if version >= since:
            rights |= right
    return rights


def restrict_files(read: list[str], write: list[str], lib: ctypes.CDLL) -> bool:
    """Landlock: from now on this process and what it starts may read and run only what lies
    beneath ``read``, and change only what lies beneath ``write`` (the run's working dir,
    the harmless devices); with ABI 6, signal no process outside the run. False where the
    kernel has no Landlock (nothing changed)."""
    version = abi(lib)
    if version < 1:
        return False
    create, add, restrict = _SYS_LANDLOCK[os.uname().machine]
    handled = _handled_fs(version)
    attr = (ctypes.c_uint64 * 3)(handled, 0, _SCOPE_SIGNAL if version >= 6 else 0)
    size = 8 if version < 4 else (16 if version < 6 else 24)  # the struct grew with the ABI
    ruleset = lib.syscall(create, attr, ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "sandbox: landlock_create_ruleset")
    try:
        readable = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
        for paths, rights in ((read, readable), (write, handled)):
            for path in paths:
                _allow(lib, add, ruleset, path, rights)
        if lib.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or lib.syscall(restrict, ruleset, 0):
            raise OSError(ctypes.get_errno(), "sandbox: landlock_restrict_self")
    finally:
        os.close(ruleset)
    return True


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # struct landlock_path_beneath_attr is packed
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _allow(lib: ctypes.CDLL, add: int, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # nothing there: nothing to allow
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FS_FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        if lib.syscall(add, ruleset, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
            raise OSError(ctypes.get_errno(), f"sandbox: landlock_add_rule {path}")
    finally:
        os.close(fd)
