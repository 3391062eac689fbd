"""Red team, round 4: kernel objects a run leaves behind. System V shared memory segments,
message queues and semaphore sets (and POSIX message queues) outlive the processes that made
them: a fallback run (no IPC namespace) made an 8 MiB segment, a queue holding a message and
a semaphore set, in C++, Perl and Python, and they stayed on the host after the run, pinning
host memory until a reboot, one run after another (each has its own uid, so no per-user limit
adds them up). Now the fallback removes what the run's uid created when the run ends; under
bubblewrap the box's IPC namespace ends with it. Every attempt goes through MultiPL-E's
build-and-run (``multiple.run_program``), at each level this machine offers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from reflectioncoder.eval import multiple, sandbox
from reflectioncoder.eval.sandbox import process, runuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")

_IPC_KINDS = {"shm": ("shmid", "-m"), "msg": ("msqid", "-q"), "sem": ("semid", "-s")}

CPP = r"""
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <mqueue.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>
int main() {
    std::printf("uid=%d\n", (int)getuid());
    int shm = shmget(IPC_PRIVATE, 8 << 20, IPC_CREAT | 0666);
    if (shm >= 0) {
        char *p = (char *)shmat(shm, 0, 0);
        if (p != (char *)-1) std::memset(p, 1, 8 << 20);  // resident: host memory
    }
    int msg = msgget(IPC_PRIVATE, IPC_CREAT | 0666);
    struct { long type; char text[1000]; } m = {1, {0}};
    if (msg >= 0) msgsnd(msg, &m, sizeof m.text, IPC_NOWAIT);
    int sem = semget(IPC_PRIVATE, 4, IPC_CREAT | 0666);
    mqd_t q = mq_open("{mq}", O_CREAT | O_RDWR, 0666, 0);
    std::printf("made shm=%d msg=%d sem=%d mq=%d\n", shm, msg, sem, (int)q);
}
"""

PERL = r"""
print "uid=$<\n";
my $shm = shmget(0, 8 << 20, 01666);
shmwrite($shm, "x" x 65536, 0, 65536) if defined $shm;
my $msg = msgget(0, 01666);
msgsnd($msg, pack("l! a*", 1, "x" x 1000), 0) if defined $msg;
my $sem = semget(0, 4, 01666);
print "made shm=", $shm // -1, " msg=", $msg // -1, " sem=", $sem // -1, "\n";
"""

PYTHON = r"""
import os
print(f"uid={os.getuid()}", flush=True)
import ctypes  # refused by the fallback's audit hook; allowed under bubblewrap

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0, 8 << 20, 0o1666)
if shm >= 0:
    ctypes.memset(libc.shmat(shm, None, 0), 1, 8 << 20)
msg = libc.msgget(0, 0o1666)
buf = ctypes.create_string_buffer(1008)
buf[0] = 1
libc.msgsnd(msg, buf, 1000, 0o4000)
sem = libc.semget(0, 4, 0o1666)
print(f"made shm={shm} msg={msg} sem={sem}", flush=True)
"""

_PROGRAMS = {"cpp": CPP, "pl": PERL, "python": PYTHON}


@pytest.fixture(params=["bwrap", "rlimits", "rlimits-no-landlock"])
def level(request, monkeypatch) -> str:
    if request.param == "bwrap":
        if not sandbox.isolation().bwrap:
            pytest.skip("bubblewrap cannot run here")
        return request.param
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "rlimits")
    if request.param == "rlimits-no-landlock":  # a kernel without it (before 5.13, or off)
        no_landlock = dataclasses.replace(sandbox.isolation(), landlock=False)
        monkeypatch.setattr(process, "isolation", lambda: no_landlock)
    return request.param


def _objects_of(uid: int) -> list[tuple[str, int]]:
    """(kind, id) of every System V IPC object on the host that ``uid`` created."""
    found = []
    for kind, (id_column, _) in _IPC_KINDS.items():
        with open(f"/proc/sysvipc/{kind}") as f:
            header, *rows = f.read().splitlines()
        columns = header.split()
        for row in rows:
            fields = row.split()
            if int(fields[columns.index("cuid")]) == uid:
                found.append((kind, int(fields[columns.index(id_column)])))
    return found


def _mqueue_left(name: str) -> bool:
    """Whether the POSIX queue ``name`` exists on the host (removed here if so)."""
    librt = ctypes.CDLL("librt.so.1", use_errno=True)
    librt.mq_open.argtypes = (ctypes.c_char_p, ctypes.c_int)
    fd = librt.mq_open(name.encode(), os.O_RDONLY)
    if fd < 0:
        return False
    os.close(fd)
    librt.mq_unlink(name.encode())
    return True


@pytest.mark.parametrize("language", sorted(_PROGRAMS))
def test_no_ipc_object_outlives_the_run(language, level):
    problem = multiple.toolchain_problem(language)
    if problem:
        pytest.skip(problem)
    mq = f"/rc-redteam4-{uuid.uuid4().hex[:12]}"
    res = multiple.run_program(language, _PROGRAMS[language].replace("{mq}", mq))
    lines = res.stdout.splitlines()
    assert lines and lines[0].startswith("uid="), res
    uid = int(lines[0].removeprefix("uid="))
    assert uid != 0 and uid != os.getuid(), res  # a run's own uid, so its objects are its own
    left: list = []
    deadline = time.monotonic() + 10  # removed beside the run's folder, off its verdict
    while time.monotonic() < deadline:
        left = _objects_of(uid)
        if not left:
            break
        time.sleep(0.05)
    for kind, ipc_id in left:  # the host as it was, whatever the verdict
        subprocess.run(["ipcrm", _IPC_KINDS[kind][1], str(ipc_id)], check=False)
    queue_left = _mqueue_left(mq)
    made = lines[1] if len(lines) > 1 else "nothing"
    assert not left, f"{language} at {level} ({made}) left {left}"
    assert not queue_left, f"{language} at {level} left the POSIX queue {mq}"


def _segment_as(uid: int, hold: bool) -> int:
    """A child that becomes ``uid``, creates a shared memory segment and exits (a killed
    scorer's run) or, ``hold``, stays alive (a run still going); its pid."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            ok = ctypes.CDLL(None).shmget(0, 4096, 0o1600) >= 0
            os.write(write, b"1" if ok else b"0")
            if hold:
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(write)
    made = os.read(read, 1)
    os.close(read)
    assert made == b"1"
    if not hold:
        os.waitpid(pid, 0)
    return pid


def test_a_killed_scorers_objects_go_at_the_next_start():
    """A scorer killed before a run's cleanup leaves what the run made; the next scorer's start
    (its isolation probe, a fresh process here) removes the objects of run uids that no live
    process has, and keeps those of a run still going (another scorer's) and the host's."""
    gone, going = runuser.new_run_uid(), runuser.new_run_uid()
    _segment_as(gone, hold=False)
    holder = _segment_as(going, hold=True)
    try:
        start = "from reflectioncoder.eval import sandbox; sandbox.isolation()"
        subprocess.run([sys.executable, "-c", start], check=True, timeout=120)
        left = {uid: _objects_of(uid) for uid in (gone, going)}
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        for uid in (gone, going):
            for kind, ipc_id in _objects_of(uid):
                subprocess.run(["ipcrm", _IPC_KINDS[kind][1], str(ipc_id)], check=False)
    assert left[gone] == [], "a killed scorer's run kept its segment"
    assert len(left[going]) == 1, "a live run lost its segment"
