"""Red team, round 5: what held, kept as a test (each level, as root, a C++ program): raising
its priority (nice, real-time, I/O class), fanotify, userfaultfd, POSIX queues, setns into
pid 1's network namespace, writing sysctls, ``/sys`` and the host's cgroup files. Each must
fail; ``pidfd_open`` of pid 1 may succeed, but gives nothing (``test_redteam5_siblings.py``).
"""

from __future__ import annotations

import os

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

PROBE = r"""
#include <cstdio>
#include <fcntl.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
static void attempt(const char* name, long r) {
    std::printf("%s %s\n", name, r < 0 ? "refused" : "ok");
}
int main() {
    attempt("nice -5", setpriority(PRIO_PROCESS, 0, -5));
    sched_param sp{1};
    attempt("SCHED_FIFO", sched_setscheduler(0, SCHED_FIFO, &sp));
    attempt("ioprio realtime", syscall(SYS_ioprio_set, 1, 0, 1 << 13));
    attempt("fanotify_init", syscall(SYS_fanotify_init, 0, 0));
    attempt("userfaultfd", syscall(SYS_userfaultfd, 0));
    attempt("mq_open", syscall(SYS_mq_open, "rc-held", O_CREAT | O_RDWR, 0600, nullptr));
    int ns = open("/proc/1/ns/net", O_RDONLY);
    attempt("setns", ns < 0 ? -1 : syscall(SYS_setns, ns, 0));
    const char* writes[] = {"/proc/sys/vm/drop_caches", "/proc/sys/kernel/core_pattern",
        "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/fs/cgroup/memory/cgroup.procs",
        "/sys/fs/cgroup/cgroup.procs", "/proc/sysrq-trigger"};
    for (const char* p : writes) attempt(p, open(p, O_WRONLY));
}
"""


def test_what_held_still_holds(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", PROBE)
    got = dict(line.rsplit(" ", 1) for line in res.stdout.splitlines())
    assert len(got) == 13, res
    assert {name: r for name, r in got.items() if r != "refused"} == {}, (level, got)
