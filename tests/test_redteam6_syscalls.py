"""Red team, round 6: calls on the machine's own state, as root, from a C++ sample at each
level. Each must fail with EPERM.

The hole: ``io_setup`` (kernel AIO) was allowed, and ``fs.aio-max-nr`` (65,536) is one count
for the whole machine: a C++ sample holding 16 contexts took all of it (``aio-nr`` 65,536),
and while it ran every ``io_setup`` on the host failed with EAGAIN, root's too (DeepSpeed's
NVMe offload makes its AIO contexts so). No toolchain uses kernel AIO (glibc's ``aio_*`` are
threads); the seccomp filter now refuses it.

The same for huge pages: ``mmap(MAP_HUGETLB)`` and ``memfd_create(MFD_HUGETLB)`` take pages
from the machine's pool (``vm.nr_hugepages``), outside the run's memory cgroup, with no
privilege. With a pool of 32 pages set up here, a C++ sample took it and the host's own
``MAP_HUGETLB`` failed (ENOMEM) while it ran (before the pool is set up, as here, the call
answers ENOMEM: the test asks for EPERM). ``SHM_HUGETLB`` was refused already (only
``vm.hugetlb_shm_group`` may); the filter refuses all three flags. No toolchain asks for them.

What held, kept: setting the clocks (``settimeofday``, ``clock_settime``, ``adjtimex``,
``clock_adjtime``: a jump of the real-time clock cannot move a timeout, which the sandbox
measures on the monotonic clock anyway), a wake-alarm timer, the host and domain names,
``reboot``, ``kexec``, modules, swap, ``acct``, ``syslog``, ``iopl``/``ioperm``,
``vhangup``, keys, ``bpf``, ``perf_event_open``, io_uring, file handles
(``name_to_handle_at``, ``open_by_handle_at``), pid 1's ``environ`` and root, a hard link
to a root-owned file (to keep past the run), ``/dev/kmsg``, a lease on a bound file (which
would stall its other readers), and the scorer's end of its stdout
reopened through ``/proc/<parent>/fd/1`` (the pipe is root's).
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
#include <sys/mman.h>
#include <sys/shm.h>
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
    void* huge = mmap(nullptr, 2 << 20, PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    attempt("mmap MAP_HUGETLB", huge == MAP_FAILED ? -1 : 0);
    attempt("memfd_create MFD_HUGETLB", syscall(SYS_memfd_create, "rc", 4));
    attempt("shmget SHM_HUGETLB", shmget(IPC_PRIVATE, 2 << 20, IPC_CREAT | 0600 | SHM_HUGETLB));
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
    attempt("link a root-owned file", link("/usr/bin/env", "env-link"));
    attempt("open /dev/kmsg", open("/dev/kmsg", O_RDONLY));
    int cache = open("/etc/ld.so.cache", O_RDONLY);
    attempt("lease on a bound file", fcntl(cache, F_SETLEASE, F_RDLCK));
    char out[64];  // the scorer's end of stdout, reopened through the parent (a root-owned pipe)
    std::snprintf(out, sizeof out, "/proc/%d/fd/1", getppid());
    attempt("reopen the parent's stdout", open(out, O_WRONLY));
}
"""


def test_calls_on_the_machine_are_refused(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", PROBE)
    got = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert len(got) == 29, res
    # refused by the uid, the file system or Landlock (EACCES, EXDEV, ...), not by seccomp
    files = {"/proc/1/environ", "/proc/1/root/", "link a root-owned file", "open /dev/kmsg"}
    files |= {"lease on a bound file", "reopen the parent's stdout"}
    assert {name: r for name, r in got.items() if name in files and r == "ok"} == {}, got
    assert {name: r for name, r in got.items() if name not in files and r != "EPERM"} == {}, (
        level,
        got,
    )


HUGE_FROM_PYTHON = """
import mmap
try:
    mmap.mmap(-1, 2 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)  # MAP_HUGETLB
    print("huge pages: ok")
except OSError as exc:
    print("huge pages:", exc.errno)
"""


def test_python_gets_no_huge_pages_either(level):
    """The filter is the kernel's, whatever the language: a HumanEval-style Python program."""
    from reflectioncoder.eval import sandbox

    res = sandbox.run_python(HUGE_FROM_PYTHON, timeout_s=10)
    assert res.stdout.strip() == "huge pages: 1", (level, res)  # EPERM (before: 12, ENOMEM)
