"""Red team, round 6: the machine's open-file table (``fs.file-max``) is one count for every
process; past it, every open by a process without ``CAP_SYS_ADMIN`` fails (``ENFILE``): a
sibling sample's compiler or runtime, another user's job. A file a process maps stays open
after it closes the descriptor, so 256 descriptors bound nothing: one process held 65,508
files, and a C++ run (64 processes, 2 GiB at some 400 bytes a file) could hold the whole
table of this machine (2.4 million). Measured before the fix: a C++ run of three processes
held 150,000 files, ending exit 0. Now a run holding more than its share
(``filetable.SHARE``) of the table is stopped (ending ``files``), at each level.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple
from reflectioncoder.eval.sandbox import filetable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

HOARDER = r"""
#include <cstdio>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
int main() {
    int fd0 = open("f", O_CREAT | O_RDWR, 0600);
    write(fd0, "x", 1);
    close(fd0);
    for (int p = 0; p < {processes}; p++) {
        if (fork() == 0) {
            int held = 0;
            for (int i = 0; i < {each}; i++) {  // a new open file per mapping, no descriptor
                int fd = open("f", O_RDONLY);
                if (fd < 0) break;
                void* m = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
                close(fd);
                if (m == MAP_FAILED) break;
                held++;
            }
            std::printf("held %d\n", held);
            std::fflush(stdout);
            sleep(2);
            _exit(0);
        }
    }
    while (wait(nullptr) > 0) {}
    std::puts("done");
}
"""


def _hoarder(total: int) -> str:
    each = 50_000
    processes = -(-total // each)
    return HOARDER.replace("{processes}", str(processes)).replace("{each}", str(each))


def test_a_run_holds_no_more_than_its_share_of_open_files(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    now = filetable.table()
    if now is None:
        pytest.skip("/proc/sys/fs/file-nr is not readable")
    share = max(now[1] // filetable.SHARE, 4096)
    if share > 200_000:
        pytest.skip(f"fs.file-max is {now[1]}: a run's share is more than this test holds")
    res = multiple.run_program("cpp", _hoarder(3 * share))
    assert res.ending is not None and res.ending.kind == "files", (level, res)
    assert not res.ok and "done" not in res.stdout
    assert res.ending.describe() == "over its share of the machine's open-file table"


def test_an_honest_run_is_far_below_its_share(level):
    """A run's files: its descriptors and the libraries it maps (a C++ program holding 200
    descriptors of its own, and the shell and ``timeout`` above it)."""
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    program = HOARDER.replace("int p = 0; p < {processes}", "int p = 0; p < 1").replace(
        "{each}", "200"
    )
    program = program.replace("close(fd);\n                if (m", "if (m")
    res = multiple.run_program("cpp", program)
    assert res.ok and "held 200" in res.stdout, (level, res)


# A process of its own holds the file: the test process's threads left by earlier tests (a
# trainer's planner, a scorer's pumps) map and unmap memory while it counts.
HOLDER = """
import mmap, sys
maps = []
print("ready", flush=True)
sys.stdin.readline()
f = open(sys.argv[1], "rb")
maps.extend(mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ) for _ in range(3))
print("mapped", flush=True)
sys.stdin.readline()
"""


def test_files_held_counts_descriptors_and_mappings(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 4096)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "ready\n"
        before = filetable.files_held([holder.pid], 10**9)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "mapped\n"
        during = filetable.files_held([holder.pid], 10**9)
        bounded = filetable.files_held([holder.pid], 2)
    finally:
        holder.kill()
        holder.wait()
    assert during - before == 7  # one descriptor, three mappings (each with its own dup)
    assert bounded < before  # stops reading mappings past its bound


def test_a_run_without_a_cgroup_counts_its_whole_tree():
    """Without a cgroup to list them, the guard counts the main process and those under it."""
    import subprocess
    import time

    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 5 & sleep 5 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(filetable.descendants(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = filetable.descendants(proc.pid)
        assert tree[0] == proc.pid and len(tree) == 3, tree
    finally:
        proc.kill()
        proc.wait()
