"""Red team, round 6: kernel memory a run holds outside its processes' pages counts against
its memory limit. Unix socket buffers (``socketpair``, allowed: rustc starts its linker through
one) queued and never read: a C++ sample of 16 processes, each filling 120 socket pairs (about
256 KiB a pair, 480 MiB in all), under a 256 MiB limit. Held at each level: the buffers are
charged to the run's memory cgroup (measured before the test: 500 pairs queued 125 MiB and the
cgroup counted 142 MiB), so the writes fail or the run is killed at its limit (ending ``memory``).
"""

from __future__ import annotations

import os

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple, sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

HOARDER = r"""
#include <cstdio>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
int main() {
    static char buf[65536];
    for (int p = 0; p < 16; p++) {
        if (fork() == 0) {
            long queued = 0;
            for (int i = 0; i < 120; i++) {
                int sv[2];
                if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) < 0) break;
                fcntl(sv[0], F_SETFL, O_NONBLOCK);
                for (ssize_t w; (w = write(sv[0], buf, sizeof buf)) > 0;) queued += w;
            }
            std::printf("queued %ld\n", queued >> 20);
            std::fflush(stdout);
            sleep(2);
            _exit(0);
        }
    }
    while (wait(nullptr) > 0) {}
}
"""


def test_socket_buffers_count_against_the_memory_limit(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    build = "g++ -O1 -o {work}/a {src}/a.cpp && cd {work} && ./a"
    res = sandbox.run_sandboxed(
        ["/bin/sh", "-c", build],
        files={"a.cpp": HOARDER},
        timeout_s=60,
        cpu_s=60,
        memory_mb=256,
        ro_binds=multiple.toolchain_env("cpp")[1],
    )
    queued_mb = sum(int(line.split()[1]) for line in res.stdout.splitlines())
    killed = res.ending is not None and res.ending.kind == "memory"
    assert killed or (res.ok and 0 < queued_mb < 256), (level, queued_mb, res)
