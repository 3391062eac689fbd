"""Red team, round 6: calls on the machine's own state, as root, from a C++ sample at each
level. Each must fail with EPERM.

The hole: ``io_setup`` (kernel AIO) was allowed, and ``fs.aio-max-nr`` (65,536) is one count
for the whole machine: a C++ sample holding 16 contexts took all of it (``aio-nr`` 65,536),
and while it ran every ``io_setup`` on the host failed with EAGAIN, root's too (DeepSpeed's
NVMe offload makes its AIO contexts so). No toolchain uses kernel AIO (glibc's ``aio_*`` are
threads); the seccomp filter now refuses it.

What held, kept: setting the clocks (``settimeofday``, ``clock_settime``, ``adjtimex``,
``clock_adjtime``: a jump of the real-time clock cannot move a timeout, which the sandbox
measures on the monotonic clock anyway), a wake-alarm timer, the host and domain names,
``reboot``, ``kexec``, modules, swap, ``acct``, ``syslog``, ``iopl``/``ioperm``,
``vhangup``, keys, ``bpf``, ``perf_event_open``, io_uring, file handles
(``name_to_handle_at``, ``open_by_handle_at``), and pid 1's ``environ`` and root.
"""

from __future__ import annotations

import os

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

PROBE = r"""
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/timerfd.h>
#include <unistd.h>
static void attempt(const char* name, long r) {
    std::printf("%s=%s\n", name, r >= 0 ? "ok" : errno == EPERM ? "EPERM" : strerror(errno));
}
int main() {
    aio_context_t ctx = 0;
    attempt("io_setup", syscall(SYS_io_setup, 4096, &ctx));
    timeval tv{};
    gettimeofday(&tv, nullptr);
    tv.tv_sec += 3600;
    attempt("settimeofday", settimeofday(&tv, nullptr));
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec -= 3600;
    attempt("clock_settime", clock_settime(CLOCK_REALTIME, &ts));
    timex tx{};
    tx.modes = ADJ_OFFSET;
    tx.offset = 1000;
    attempt("adjtimex", syscall(SYS_adjtimex, &tx));
    attempt("clock_adjtime", syscall(SYS_clock_adjtime, CLOCK_REALTIME, &tx));
    attempt("timerfd wake alarm", timerfd_create(CLOCK_REALTIME_ALARM, 0));
    attempt("sethostname", syscall(SYS_sethostname, "rc-owned", 8));
    attempt("setdomainname", syscall(SYS_setdomainname, "rc-owned", 8));
    attempt("reboot", syscall(SYS_reboot, 0xfee1dead, 672274793, 0 /* CAD off */, nullptr));
    attempt("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0));
    attempt("delete_module", syscall(SYS_delete_module, "rc_none", 0));
    attempt("swapoff", syscall(SYS_swapoff, "/rc-none"));
    attempt("acct", syscall(SYS_acct, nullptr));
    char buf[64];
    attempt("syslog", syscall(SYS_syslog, 3, buf, sizeof buf));
    attempt("iopl", syscall(SYS_iopl, 3));
    attempt("ioperm", syscall(SYS_ioperm, 0x80, 1, 1));
    attempt("vhangup", syscall(SYS_vhangup));
    attempt("request_key", syscall(SYS_request_key, "user", "rc", nullptr, 0));
    char handle[136] = {};
    *(unsigned*)handle = 128;
    int mount_id;
    attempt("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", handle,
        &mount_id, 0));
    attempt("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, handle, O_RDONLY));
    attempt("/proc/1/environ", open("/proc/1/environ", O_RDONLY));
    attempt("/proc/1/root/", open("/proc/1/root/", O_RDONLY | O_DIRECTORY));
}
"""


def test_calls_on_the_machine_are_refused(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", PROBE)
    got = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert len(got) == 22, res
    files = {"/proc/1/environ", "/proc/1/root/"}  # refused by the uid (EACCES), not seccomp
    assert {name: r for name, r in got.items() if name in files and r == "ok"} == {}, got
    assert {name: r for name, r in got.items() if name not in files and r != "EPERM"} == {}, (
        level,
        got,
    )
