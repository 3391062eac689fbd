"""Red team, round 5: calls the box's seccomp filter left open that no program scored needs.
The filter refused the mount API (``open_tree``, ``fsopen``...) and ``quotactl``, but not their
newer forms ``open_tree_attr`` (Linux 6.15) and ``quotactl_fd`` (5.14), nor legacy calls that
are kernel attack surface and nothing else here: ``modify_ldt`` (x86's local descriptor
table, the way into several old kernel exploits), ``uselib``, ``ustat``, ``sysfs``,
``lookup_dcookie``. Each is now refused (EPERM) at every level; before, ``modify_ldt`` read
the table, ``sysfs`` counted the file system types and ``open_tree_attr`` opened ``/``.
"""

from __future__ import annotations

import os

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple

pytestmark = pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the legacy calls are x86-64's (the numbers too)"
)
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

CALLS = r"""
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>
static void attempt(const char* name, long r) {
    std::printf("%s %s\n", name, r >= 0 ? "ok" : (errno == EPERM ? "EPERM" : std::strerror(errno)));
}
int main() {
    static char buf[4096];
    attempt("open_tree_attr", syscall(467, AT_FDCWD, "/", 0, nullptr, 0));
    attempt("quotactl_fd", syscall(443, 0, 0x800004, 0, buf));  // Q_GETFMT
    attempt("modify_ldt", syscall(154, 0, buf, 16));  // read the table
    attempt("uselib", syscall(134, "/nonexistent"));
    attempt("ustat", syscall(136, 0, buf));
    attempt("sysfs", syscall(139, 3));  // how many file system types
    attempt("lookup_dcookie", syscall(212, 0, buf, 16));
}
"""


def test_legacy_and_newer_kernel_calls_are_refused(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", CALLS)
    got = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert len(got) == 7, res
    assert {name: e for name, e in got.items() if e != "EPERM"} == {}, (level, got)
