"""Stop signals are refused to every program whatever call sends them (redteam5: kill, tkill,
tgkill, rt_(tg)sigqueueinfo, pidfd_send_signal), yet one call made the kernel send one for
it: ``fcntl(fd, F_SETSIG, SIGSTOP)`` on a pipe it owns with ``F_SETOWN`` set to its parent
(``timeout``, the same uid) and ``O_ASYNC``: a write to the pipe stopped ``timeout`` at every
level (its state 'T'), the way round the filter to the pass at 3x the time limit that
test_redteam5_orphans.py closes. F_SETSIG with a stop signal is refused now; with another
signal (a program's own I/O notification) it still works."""

from __future__ import annotations

import os

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the levels' run uid is root's")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

PROGRAM = r"""
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>
int main() {
    int p[2];
    pipe(p);
    pid_t parent = getppid();  // timeout
    int usr1 = fcntl(p[0], F_SETSIG, SIGUSR1);
    int stop = fcntl(p[0], F_SETSIG, SIGSTOP);
    if (stop == 0) {  // the kernel would send it: point it at the parent and let it go
        fcntl(p[0], F_SETOWN, parent);
        fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_ASYNC);
        write(p[1], "x", 1);
        usleep(300000);
    }
    char path[64], buf[256] = {0};
    std::snprintf(path, sizeof path, "/proc/%d/stat", parent);
    if (FILE* f = std::fopen(path, "r")) { std::fread(buf, 1, 255, f); std::fclose(f); }
    const char* state = std::strrchr(buf, ')');
    std::printf("usr1=%d stop=%d parent=%c\n", usr1, stop, state ? state[2] : '?');
    kill(parent, SIGCONT);
}
"""


def test_f_setsig_cannot_send_a_stop_signal(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", PROGRAM)
    assert "stop=-1" in res.stdout, f"F_SETSIG SIGSTOP was taken at {level}: {res}"
    assert "parent=T" not in res.stdout, f"timeout was stopped at {level}: {res}"
    assert "usr1=0" in res.stdout, f"F_SETSIG with another signal was refused at {level}: {res}"
