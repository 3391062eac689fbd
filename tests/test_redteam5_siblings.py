"""Red team, round 5: a run against the processes beside it. A victim sample holds a secret
in its memory and environment and sleeps; an attacker sample started beside it (and the
scorer, whose pid it is given) is searched for in ``/proc`` and attacked by every way a
process reaches another: ``/proc/<pid>/mem``, ``environ``, ``fd/*`` and ``cwd``, ptrace
attach, ``process_vm_readv``, ``pidfd_getfd``, signals, ``/proc/<pid>/oom_score_adj``.
Each level holds (bubblewrap: its own PID namespace shows neither; the fallback: other uids,
the seccomp filter, Landlock's signal scope); the attacker reports every success.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

VICTIM = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
static char secret[64];
int main() {
    std::strcpy(secret, "{secret}");
    setenv("RC_SECRET", secret, 1);
    std::printf("victim %d\n", getpid());
    std::fflush(stdout);
    sleep(4);
}
"""

ATTACKER = r"""
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <string>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
static void report(int pid, const char* what) { std::printf("reached %d %s\n", pid, what); }
static bool holds(const std::string& path, const char* needle) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return false;
    char buf[1 << 16];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n > 0 && memmem(buf, n, needle, std::strlen(needle)) != nullptr;
}
static void attack(int pid) {
    std::string base = "/proc/" + std::to_string(pid);
    if (holds(base + "/environ", "RC_SECRET")) report(pid, "environ");
    if (open((base + "/mem").c_str(), O_RDONLY) >= 0) report(pid, "mem");
    if (open((base + "/oom_score_adj").c_str(), O_WRONLY) >= 0) report(pid, "oom_score_adj");
    if (DIR* d = opendir((base + "/fd").c_str())) { report(pid, "fd list"); closedir(d); }
    char cwd[256];
    if (readlink((base + "/cwd").c_str(), cwd, sizeof cwd) >= 0) report(pid, "cwd");
    if (ptrace(PTRACE_ATTACH, pid, 0, 0) == 0) report(pid, "ptrace");
    char buf[16];
    iovec local{buf, sizeof buf}, remote{(void*)0x400000, sizeof buf};
    if (syscall(SYS_process_vm_readv, pid, &local, 1, &remote, 1, 0) >= 0 || errno == EFAULT)
        report(pid, "process_vm_readv");
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    if (pidfd >= 0 && syscall(SYS_pidfd_getfd, pidfd, 0, 0) >= 0) report(pid, "pidfd_getfd");
    // signal 0: the permission check alone (SIGCONT passes within its own session by design:
    // bubblewrap's pid 1 shares the box's session and may be resumed, nothing more)
    if (kill(pid, 0) == 0) report(pid, "signal");
}
static int uid_of(const char* pid) {
    std::string path = std::string("/proc/") + pid + "/status";
    FILE* f = std::fopen(path.c_str(), "r");
    char line[256];
    int uid = -1;
    while (f && std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "Uid: %d", &uid) == 1) break;
    if (f) std::fclose(f);
    return uid;
}
int main() {
    int me = getuid(), tried = 0;
    attack({scorer});
    if (DIR* d = opendir("/proc"))
        while (dirent* e = readdir(d)) {
            int pid = std::atoi(e->d_name);
            if (pid <= 0 || uid_of(e->d_name) == me) continue;  // its own processes
            attack(pid);
            tried++;
        }
    std::printf("attacked %d\n", tried);
}
"""


def test_a_run_reaches_no_sibling_nor_the_scorer(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    secret = f"rc-secret-{uuid.uuid4().hex}"
    victim: list = []
    runner = threading.Thread(
        target=lambda: victim.append(
            multiple.run_program("cpp", VICTIM.replace("{secret}", secret))
        )
    )
    runner.start()
    time.sleep(1.0)  # the victim compiled and sleeping (its build takes about as long)
    res = multiple.run_program("cpp", ATTACKER.replace("{scorer}", str(os.getpid())))
    runner.join()
    assert "attacked" in res.stdout, res
    assert [line for line in res.stdout.splitlines() if line.startswith("reached")] == [], level
    assert secret not in res.stdout + res.stderr
    assert victim and "victim" in victim[0].stdout, victim
