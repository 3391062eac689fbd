"""Native code (C, compiled in the box as MultiPL-E's C++ is) against the doors a Python probe
cannot try: the seccomp filter's other ABIs (i386 ``int 0x80`` and x32 numbers, which a filter
that checked only syscall numbers would let through), real-time scheduling and I/O priority
(a box that starved the machine), device nodes, the terminal (``TIOCSTI`` types into the
scorer's shell), lowering its nice value. Each line the program prints is an attempt and its
errno, or ``WORKED``; the test wants none to work."""

from __future__ import annotations

import os
import shutil

import pytest

from reflectioncoder.eval import sandbox

pytestmark = [
    pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler"),
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 ABIs"),
    # the fallback runs native programs as the caller: as root, nice and mknod are its own
    pytest.mark.skipif(not sandbox.bwrap_works(), reason="bubblewrap cannot run here"),
]

DOORS = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void report(const char *name, long result) {
  printf("%s: %s\n", name, result < 0 ? strerror(errno) : "WORKED");
}

int main(void) {
  struct sched_param fifo = {.sched_priority = 1};
  report("SCHED_FIFO", sched_setscheduler(0, SCHED_FIFO, &fifo));
  report("nice -5", setpriority(PRIO_PROCESS, 0, -5));
  report("real-time I/O priority", syscall(SYS_ioprio_set, 1, 0, 1 << 13));
  report("open /dev/tty", open("/dev/tty", O_RDWR));
  char c = 'x';
  report("TIOCSTI on stdin", ioctl(0, TIOCSTI, &c));
  report("mknod /dev/null's twin", mknod("/tmp/null2", S_IFCHR | 0666, makedev(1, 3)));
  report("x32 ABI getpid", syscall(0x40000000 | 39));
  report("x32 ABI socket", syscall(0x40000000 | 41, 2, 1, 0));
  report("acct", syscall(SYS_acct, "/tmp/acct"));
  report("syslog", syscall(SYS_syslog, 3, (char[64]){0}, 64));
  pid_t child = fork();
  if (child == 0) {  /* the i386 ABI: socketcall(SYS_SOCKET); the filter kills the process */
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(102), "b"(1), "c"(0));
    printf("i386 ABI socketcall: %s\n", r < 0 ? strerror(-r) : "WORKED");
    _exit(0);
  }
  int status;
  waitpid(child, &status, 0);
  printf("i386 ABI: %s\n", WIFSIGNALED(status) ? "killed" : "ran");
  printf("probed\n");
  return 0;
}
"""


def test_native_doors_stay_shut(monkeypatch):
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap")
    res = sandbox.run_sandboxed(
        ["/bin/sh", "-c", "gcc -O0 -o /tmp/work/doors {src}/doors.c && /tmp/work/doors"],
        files={"doors.c": DOORS},
        timeout_s=60,
        memory_mb=1024,
    )
    assert "probed" in res.stdout, res.stdout + res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert [line for line in lines if "WORKED" in line] == [], res.stdout
    assert "i386 ABI: killed" in lines, res.stdout  # SIGSYS: the filter's other-ABI rule
    assert len(lines) >= 12, res.stdout
