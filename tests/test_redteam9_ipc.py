"""Red team, round 9: System V IPC in the fallback, where no IPC namespace is the run's own.

A fallback run reached the host's System V objects: a segment, queue or semaphore set another
program made with a mode that lets any user in (0666: some X clients', databases', MPI
libraries') was read and written by a C++ sample, and a run could take the machine's whole
counts (``kernel.shmmni`` 4096 segments, ``msgmni`` and ``semmni`` 32,000: one count each for
every process, no per-user or cgroup bound) while it ran, so the host's own ``shmget`` failed
(``ENOSPC``). Round 4 removed what a run left when it ended; it did not stop either. No
toolchain scored uses System V IPC (POSIX semaphores and shared memory are files), so the
box's filter now refuses the whole family at every level (under bubblewrap the box's IPC
namespace held already, and the filter is one for every level).
"""

from __future__ import annotations

import ctypes
import errno
import os

import pytest
from test_redteam4_ipc import level  # noqa: F401 - the fixture: bwrap, rlimits, no Landlock

from reflectioncoder.eval import multiple

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")

# the host's objects: made by root with a mode any user may use, holding a secret
SECRET = b"host-secret-9f2c"

CPP = r"""
#include <cstdio>
#include <cstring>
#include <cerrno>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
int main() {
    int shm = shmget({key}, 0, 0);
    char *p = shm >= 0 ? (char *)shmat(shm, 0, 0) : (char *)-1;
    if (p != (char *)-1) { std::printf("read=%s\n", p); std::strcpy(p, "overwritten"); }
    else std::printf("attach errno=%d\n", errno);
    struct { long type; char text[64]; } m = {0, {0}};
    int q = msgget({key}, 0);
    if (q >= 0 && msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT) >= 0) std::printf("msg=%s\n", m.text);
    int made[3] = {0, 0, 0};
    for (int i = 0; i < {n}; i++) made[0] += shmget(IPC_PRIVATE, 1, IPC_CREAT | 0600) >= 0;
    for (int i = 0; i < {n}; i++) made[1] += msgget(IPC_PRIVATE, IPC_CREAT | 0600) >= 0;
    for (int i = 0; i < {n}; i++) made[2] += semget(IPC_PRIVATE, 1, IPC_CREAT | 0600) >= 0;
    std::printf("made shm=%d msg=%d sem=%d errno=%d\n", made[0], made[1], made[2], errno);
}
"""


@pytest.fixture
def host_objects():
    """A 0666 segment and queue of the host's, each holding ``SECRET``; their key."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    key = 0x52C90000 + os.getpid() % 0xFFFF
    shm = libc.shmget(key, 4096, 0o1666)
    queue = libc.msgget(key, 0o1666)
    assert shm >= 0 and queue >= 0, ctypes.get_errno()
    at = libc.shmat(shm, None, 0)
    ctypes.memmove(at, SECRET + b"\0", len(SECRET) + 1)
    message = ctypes.create_string_buffer(8 + 64)
    message[0] = 1
    message[8 : 8 + len(SECRET)] = SECRET
    assert libc.msgsnd(queue, message, 64, 0o4000) == 0
    yield key, ctypes.cast(at, ctypes.c_char_p)
    libc.shmdt(ctypes.c_void_p(at))
    libc.shmctl(shm, 0, None)  # IPC_RMID
    libc.msgctl(queue, 0, None)


def test_the_hosts_ipc_objects_are_out_of_reach(level, host_objects):  # noqa: F811
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    key, segment = host_objects
    res = multiple.run_program("cpp", CPP.replace("{key}", hex(key)).replace("{n}", "64"))
    assert res.exit_code == 0, res
    assert SECRET.decode() not in res.stdout, (level, res.stdout)  # before: read, fallback
    assert segment.value == SECRET, (level, segment.value)  # before: overwritten
    # before: 64 of each made in the fallback (and the machine's 4096 segments, one count)
    assert f"made shm=0 msg=0 sem=0 errno={errno.EPERM}" in res.stdout, (level, res.stdout)
