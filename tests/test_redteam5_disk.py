"""Red team, round 5: the fallback's files are on the host's disk. Under bubblewrap a run's
files live in its box's tmpfs (``tmp_mb``, counted by its memory limit); the fallback has no
mount of its own, and RLIMIT_FSIZE bounds one file (64 MiB), not how many: a run could fill
the host's disk or inodes (a Python sample made 400,000 files in 17 s), failing every other
writer on the machine until it ended. Now ``sandbox.diskguard`` measures what the run keeps
(its working dir, its uid's files in the world-writable folders without Landlock, files it
deleted but holds open or mapped) every 50 ms and stops it past ``tmp_mb`` (ending ``disk``;
what it wrote within those 50 ms may pass the bound). Each attack writes 3x its run's
``tmp_mb``, then holds its files a second: before, every one ended by itself, exit 0.
"""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox import process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")

TMP_MB = 16  # the run's bound: 16 MiB, 256 files

ATTACKS = {
    "many files": "i=0; while [ $i -lt 2000 ]; do : > f$i; i=$((i+1)); done; echo done; sleep 1",
    "big files": "for i in 1 2 3; do head -c 16M /dev/zero > big$i; done; echo done; sleep 1",
    "deep folders": "i=0; while [ $i -lt 600 ]; do mkdir d; cd d; i=$((i+1)); done; sleep 1",
    "deleted, held open": "exec 5>big; rm big; head -c 48M /dev/zero >&5; echo done; sleep 1",
}
MAPPED = r"""
#include <cstdio>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
int main() {
    static char block[1 << 20];
    for (int f = 0; f < 3; f++) {
        int fd = open("mapped", O_CREAT | O_RDWR | O_TRUNC, 0600);
        for (int i = 0; i < 16; i++) write(fd, block, sizeof block);
        mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);  // the blocks stay with the map
        close(fd);
        unlink("mapped");
    }
    std::puts("done");
    std::fflush(stdout);
    sleep(1);
}
"""


@pytest.fixture(params=["rlimits", "rlimits-no-landlock"])
def fallback(request, monkeypatch) -> str:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "rlimits")
    if request.param == "rlimits-no-landlock":  # a kernel without it (before 5.13, or off)
        no_landlock = dataclasses.replace(sandbox.isolation(), landlock=False)
        monkeypatch.setattr(process, "isolation", lambda: no_landlock)
    return request.param


def _run(argv: list[str], files: dict | None = None) -> sandbox.ExecResult:
    return sandbox.run_sandboxed(argv, files=files, timeout_s=30, tmp_mb=TMP_MB, cpu_s=30)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_fallback_run_keeps_no_more_than_its_tmp_mb(fallback, attack):
    res = _run(["/bin/sh", "-c", ATTACKS[attack]])
    assert res.ending is not None and res.ending.kind == "disk", f"{attack} at {fallback}: {res}"
    assert res.exit_code is None and not res.ok


def test_mapped_deleted_files_count(fallback):
    build = "g++ -O1 -o {work}/a {src}/a.cpp && cd {work} && ./a"
    res = _run(["/bin/sh", "-c", build], files={"a.cpp": MAPPED})
    assert res.ending is not None and res.ending.kind == "disk", res


def test_world_writable_folders_count_without_landlock(fallback):
    """Without Landlock the run may write /tmp (the host's): its uid's files there count."""
    name = f"/tmp/rc-redteam5-{uuid.uuid4().hex[:8]}"
    attack = f"for i in 1 2 3; do head -c 16M /dev/zero > {name}-$i; done; echo done; sleep 1"
    try:
        res = _run(["/bin/sh", "-c", attack])
    finally:
        for i in (1, 2, 3):
            if os.path.exists(f"{name}-{i}"):
                os.unlink(f"{name}-{i}")
    if fallback == "rlimits":  # Landlock refuses the writes themselves
        assert "Permission denied" in res.stderr, res
        return
    assert res.ending is not None and res.ending.kind == "disk", res


def test_an_honest_run_under_the_bound_passes(fallback):
    res = _run(
        [
            "/bin/sh",
            "-c",
            "head -c 4M /dev/zero > a; i=0; while [ $i -lt 100 ]; do "
            ": > f$i; i=$((i+1)); done; sleep 0.3; echo done",
        ]
    )
    assert res.ok and "done" in res.stdout, res
