"""Red team, round 7: ``fallocate`` took the host's disk faster than the fallback's disk guard
looks. The guard (``sandbox/diskguard.py``) measures what a fallback run keeps every 50 ms
(less often when a walk costs more); writes fill a disk at the page cache's pace, but one
``fallocate`` reserves 64 MiB (RLIMIT_FSIZE) of blocks at once: a C++ run with a 16 MiB bound
held 704 MiB of the host's disk before it was stopped (11 files in one look; more where the
walk is slow), where writes reached 17-57 MiB. Now the box's seccomp filter answers
``fallocate`` with EOPNOTSUPP at every level, as a file system without it does: glibc's
``posix_fallocate`` then writes the blocks; every installed MultiPL-E language's verdicts
are unchanged at both levels (Go's linker calls ``fallocate`` and goes on without it).
"""

from __future__ import annotations

import os

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

ATTACK = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
int main() {
    char name[32];
    int made = 0, err = 0;
    for (int i = 0; i < 48; i++) {  /* 3 GiB of blocks, at once */
        snprintf(name, sizeof name, "f%d", i);
        int fd = open(name, O_CREAT | O_WRONLY, 0600);
        if (fallocate(fd, 0, 0, 64 << 20) != 0) { err = errno; break; }
        close(fd);
        made++;
    }
    printf("made %d: %s\n", made, strerror(err));
    int fd = open("honest", O_CREAT | O_WRONLY, 0600);  /* the portable call still works */
    struct stat st;
    int rc = posix_fallocate(fd, 0, 1 << 20);
    fstat(fd, &st);
    printf("posix_fallocate %d size %ld\n", rc, (long)st.st_size);
    fflush(stdout);
    sleep(1);
}
"""


def test_fallocate_takes_no_disk_at_once(level):
    build = "gcc -O1 -o {work}/a {src}/a.c && cd {work} && ./a"
    res = sandbox.run_sandboxed(
        ["/bin/sh", "-c", build], files={"a.c": ATTACK}, timeout_s=30, cpu_s=30, tmp_mb=16
    )
    assert "made 0: Operation not supported" in res.stdout, (level, res)
    assert "posix_fallocate 0 size 1048576" in res.stdout, (level, res)
    assert res.ok, (level, res)


PADDED = r"""
#include <cstdio>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
int main() {
    for (int p = 0; p < 16; p++) {
        if (fork() == 0) {  // anonymous mappings that never merge: each look reads them all
            long pages = 50000;
            char* a = (char*)mmap(nullptr, pages * 4096, PROT_READ,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            for (long i = 0; i < pages; i += 2) mprotect(a + i * 4096, 4096, PROT_NONE);
            sleep(6);
            _exit(0);
        }
    }
    sleep(2);  // a look at the padded run has begun: the next one came 20 looks' time later
    static char block[1 << 20];
    for (int f = 0; f < 3; f++) {
        char name[16];
        std::snprintf(name, sizeof name, "big%d", f);
        int fd = open(name, O_CREAT | O_WRONLY, 0600);
        for (int i = 0; i < 16; i++) write(fd, block, sizeof block);
        close(fd);
    }
    std::puts("done");
    std::fflush(stdout);
    sleep(1);
    for (int p = 0; p < 16; p++) wait(nullptr);
}
"""


@pytest.mark.slow
def test_a_run_that_slows_the_disk_guard_is_still_stopped(level):
    """The fallback's disk guard reads every mapping of the run's processes (its deleted files
    held mapped): 16 processes padded with 50,000 anonymous mappings each made a look take
    most of a second, and the next came 20 looks' time later; 48 MiB written past a 16 MiB
    bound in between ended with the run (exit 0). Now the run's CPU is held while it is looked
    at, and the next look comes within 0.25 s."""
    if level == "bwrap":
        pytest.skip("the box's files are in its tmpfs, bounded by its size")
    build = "g++ -O1 -o {work}/a {src}/a.cpp && cd {work} && ./a"
    res = sandbox.run_sandboxed(
        ["/bin/sh", "-c", build], files={"a.cpp": PADDED}, timeout_s=60, cpu_s=60, tmp_mb=16
    )
    assert res.ending is not None and res.ending.kind == "disk", (level, res)


def test_a_wide_tree_takes_none_of_the_scorers_descriptors(level, monkeypatch):
    """The disk guard opened every subfolder it found at once: a run of 2,000 empty folders
    held 2,000 of the scorer's descriptors at each look, and under the usual soft limit of
    1,024 a sibling's start failed, ``Too many open files`` (55 of 335 starts, measured).
    Now a walk holds one descriptor per level."""
    if level == "bwrap":
        pytest.skip("the box's files are in its tmpfs, bounded by its size")
    import resource
    import threading

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    done, siblings = threading.Event(), []

    def sibling() -> None:
        while not done.is_set():
            try:
                res = sandbox.run_sandboxed(["/bin/sh", "-c", "echo hi"], timeout_s=10)
                siblings.append(res.stdout.strip() == "hi" or res)
            except OSError as exc:
                siblings.append(exc)

    beside = threading.Thread(target=sibling)
    beside.start()
    try:
        attack = "i=0; while [ $i -lt 2000 ]; do mkdir d$i; i=$((i+1)); done; echo made; sleep 2"
        res = sandbox.run_sandboxed(["/bin/sh", "-c", attack], timeout_s=30, cpu_s=30)
    finally:
        done.set()
        beside.join()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert res.ok and "made" in res.stdout, (level, res)  # under its bound: 2,000 of 8,192
    failed = [s for s in siblings if s is not True]
    assert siblings and not failed, (level, failed[:3], len(siblings))


def test_nesting_deeper_than_a_walk_holds_is_over_the_bound(level):
    if level == "bwrap":
        pytest.skip("the box's files are in its tmpfs, bounded by its size")
    attack = "i=0; while [ $i -lt 200 ]; do mkdir d; cd d; i=$((i+1)); done; echo made; sleep 2"
    res = sandbox.run_sandboxed(["/bin/sh", "-c", attack], timeout_s=30, cpu_s=30)
    assert res.ending is not None and res.ending.kind == "disk", (level, res)


DEEP = r"""
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main() {
    int n = 0;
    while (n < 6000 && mkdir("d", 0700) == 0 && chdir("d") == 0) n++;
    printf("deep %d\n", n);
    fflush(stdout);
    sleep(2);
}
"""


def test_a_deep_tree_is_removed_after_the_run(level, monkeypatch):
    """``shutil.rmtree`` takes one Python frame per level: a run 6,000 folders deep (made
    within one look of the disk guard) raised RecursionError in the cleanup thread, and the
    run's folder stayed on the host (with its IPC objects and, without Landlock, its files in
    world-writable folders: the cleanup stopped there). Now ``rm`` removes what rmtree
    cannot."""
    import subprocess
    import tempfile
    import time
    import uuid

    if level == "bwrap":
        pytest.skip("the box's working dir is in its tmpfs, gone with it")
    runs = f"/tmp/rc-redteam7-{uuid.uuid4().hex[:8]}"  # where the run's folder is made
    os.mkdir(runs, 0o755)  # the run's uid passes through it, as through /tmp
    monkeypatch.setattr(tempfile, "tempdir", runs)
    build = "gcc -O1 -o {work}/a {src}/a.c && cd {work} && ./a"
    res = sandbox.run_sandboxed(
        ["/bin/sh", "-c", build], files={"a.c": DEEP}, timeout_s=30, cpu_s=30
    )
    try:
        assert res.ending is not None and res.ending.kind == "disk", (level, res)
        deadline = time.monotonic() + 20  # removed off the verdict's path
        while os.listdir(runs) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert os.listdir(runs) == [], level
    finally:
        subprocess.run(["rm", "-rf", runs], check=False)
