"""Red team, round 8: the open-file guard's two leftovers from round 7.

Several scorer processes on one machine each gave their own runs half of the machine's
open-file table (``fs.file-max``): each process counted only its own runs, so two scorers at
``--parallel 64`` let 128 runs hold the whole table. Now every run started by root holds a
uid claim in ``runuser.CLAIMS`` (a locked file, one per run under way, whatever its
scorer), and a run's share is half the table divided among the claims of the machine.

Without a cgroup, the guard counted the run's main process and those under it: a double
fork's orphan is reparented out of that tree, and it held as many files as it liked (a C++
run's orphan held twice its share, exit 0). Now the processes of the run's own uid (and its
marker) count wherever they lie, as the teardown's sweep finds them.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from reflectioncoder.eval import multiple
from reflectioncoder.eval.sandbox import filetable, process, runuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")

# another scorer: claims ``runs`` uids in ``folder`` and holds them until its stdin closes
OTHER_SCORER = """
import sys
from reflectioncoder.eval.sandbox import runuser
runuser.CLAIMS = sys.argv[1]
for _ in range(int(sys.argv[2])):
    runuser.new_run_uid()
print("claimed", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def claims(tmp_path, monkeypatch) -> str:
    folder = str(tmp_path / "run-uids")
    monkeypatch.setattr(runuser, "CLAIMS", folder)
    return folder


def _other_scorer(folder: str, runs: int) -> subprocess.Popen:
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_SCORER, folder, str(runs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdout is not None and other.stdout.readline().strip() == "claimed"
    return other


def test_another_scorers_runs_shrink_this_ones_share(claims):
    """Two scorers, 100 runs under way in the other: this one's run may hold a two-hundredth
    of the table (half among 100), not the 1/64 a run alone in its process had."""
    other = _other_scorer(claims, 100)
    try:
        assert filetable.machine_runs(0) == 100
        guard = filetable.FileTableGuard(list)
        try:
            guard.maximum = 10_000_000
            assert guard.bound == 10_000_000 // 200, guard.bound
        finally:
            guard.close()
    finally:
        other.communicate("")
    runuser.remove_stale_claims()  # it ended without its runs' cleanup
    assert filetable.machine_runs(0) == 0


def test_a_killed_scorers_claims_go_at_the_next_start(claims):
    """A scorer killed before its runs' cleanup leaves their claims, unlocked: the next
    scorer's start removes them (they would shrink every share) and keeps those held."""
    other = _other_scorer(claims, 3)
    held = set(os.listdir(claims))
    killed = _other_scorer(claims, 2)
    killed.kill()
    killed.communicate()  # its pipes closed now, not at some later collection
    try:
        assert filetable.machine_runs(0) == 5
        runuser.remove_stale_claims()
        assert set(os.listdir(claims)) == held
        for name in held:  # still locked by the other scorer
            fd = os.open(f"{claims}/{name}", os.O_RDONLY)
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(fd)
    finally:
        other.communicate("")


ORPHAN = r"""
#include <cstdio>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
int main() {
    int fd0 = open("f", O_CREAT | O_RDWR, 0600);
    write(fd0, "x", 1);
    close(fd0);
    pid_t middle = fork();
    if (middle == 0) {
        if (fork() == 0) {  // the orphan: its parent exits, it is reparented out of the tree
            setsid();
            usleep(200000);
            int held = 0;
            for (int i = 0; i < {files}; i++) {
                int fd = open("f", O_RDONLY);
                if (fd < 0) break;
                void* m = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
                close(fd);
                if (m == MAP_FAILED) break;
                held++;
            }
            sleep(6);
            _exit(0);
        }
        _exit(0);
    }
    waitpid(middle, nullptr, 0);
    sleep(3);  // the main process waits while its orphan holds the files
    std::puts("done");
}
"""


@pytest.mark.parametrize("level", ["bwrap", "rlimits"])
def test_an_orphan_without_a_cgroup_counts_against_the_share(level, monkeypatch):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    if level == "rlimits":
        monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "rlimits")
    elif not process.isolation().bwrap:
        pytest.skip("bubblewrap cannot run here")
    monkeypatch.setattr(process, "make_cgroup", lambda *args: None)
    now = filetable.table()
    if now is None:
        pytest.skip("/proc/sys/fs/file-nr is not readable")
    share = max(now[1] // filetable.SHARE, 4096)
    if share > 60_000:
        pytest.skip(f"fs.file-max is {now[1]}: one process maps at most 65,530 files")
    res = multiple.run_program("cpp", ORPHAN.replace("{files}", str(share + share // 2)))
    assert res.ending is not None and res.ending.kind == "files", (level, res)
