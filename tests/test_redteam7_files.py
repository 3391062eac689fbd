"""Red team, round 7: the open-file guard (``sandbox/filetable.py``) between its counts, and
many runs at once.

A count of what a run holds reads every mapping of every process of the run (some 0.7 us
each, up to 65,530 a process); round 6 then waited 20 counts' time before the next. A C++ run
that padded 16 processes with 50,000 anonymous mappings each, held just under its share while
the first count ran, then opened on, reached 2.7 times its share of the machine's table
before it was stopped (measured: 105,708 files above the machine's count for a share of
38,535; each process that finished its loop held 15,000), and more padding bought more. Now
the run's CPU is held while it is counted, and it is counted at every tick while the machine
is past its share. And the share was 1/64 of the table whatever the scorer's ``--parallel``:
128 runs at once could take twice the table. Now this process's runs under way share at most
half of it.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple
from reflectioncoder.eval.sandbox import cgroup, filetable, records
from reflectioncoder.eval.sandbox.probe import isolation

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

PADDED = r"""
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
            // anonymous mappings that never merge: each count reads them all
            long pages = 30000;
            char* a = (char*)mmap(nullptr, pages * 4096, PROT_READ,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            for (long i = 0; i < pages; i += 2) mprotect(a + i * 4096, 4096, PROT_NONE);
            int held = 0;
            for (int i = 0; i < {each}; i++) {
                if (i == {first}) usleep(1000000);  // under the share while the count begins
                int fd = open("f", O_RDONLY);
                if (fd < 0) break;
                void* m = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
                close(fd);
                if (m == MAP_FAILED) break;
                held++;
            }
            std::printf("held %d\n", held);
            std::fflush(stdout);
            sleep(3);
            _exit(0);
        }
    }
    while (wait(nullptr) > 0) {}
    std::puts("done");
}
"""


def _share() -> int:
    now = filetable.table()
    if now is None:
        pytest.skip("/proc/sys/fs/file-nr is not readable")
    share = max(now[1] // filetable.SHARE, 4096)
    if share > 100_000:
        pytest.skip(f"fs.file-max is {now[1]}: a run's share is more than this test holds")
    return share


def _peak_while(run) -> tuple[object, int]:
    """``run()``'s result and the most files the machine held above its count before."""
    base, peak, done = filetable.table()[0], [0], threading.Event()  # type: ignore[index]

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], filetable.table()[0])  # type: ignore[index]
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        res = run()
    finally:
        done.set()
        sampler.join()
    return res, peak[0] - base


@pytest.mark.slow
def test_a_run_that_slows_its_count_still_stops_near_its_share(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    share, processes = _share(), 16
    first = share // processes - 100  # together just under the share, then on to 8 times it
    program = PADDED.replace("{processes}", str(processes)).replace("{first}", str(first))
    program = program.replace("{each}", str(8 * share // processes))
    res, peak = _peak_while(lambda: multiple.run_program("cpp", program))
    assert res.ending is not None and res.ending.kind == "files", (level, res)
    # its share, what it opens in one 50 ms tick, and the rest of the machine moving meanwhile
    assert peak < 1.6 * share, (level, peak, share)


def test_runs_under_way_together_hold_at_most_half_the_table(monkeypatch):
    # this process's runs alone (another scorer's on the machine: test_redteam8_files.py)
    monkeypatch.setattr(filetable, "machine_runs", lambda *args: 0)
    maximum = 10_000_000
    guards = [filetable.FileTableGuard(list) for _ in range(200)]
    try:
        for guard in guards:
            guard.maximum = maximum
        assert sum(guard.bound for guard in guards) <= maximum // 2  # type: ignore[misc]
        assert guards[0].bound == maximum // 400
    finally:
        for guard in guards:
            guard.close()
    alone = filetable.FileTableGuard(list)
    alone.maximum = maximum
    try:
        assert alone.bound == maximum // filetable.SHARE  # one run: 1/64, as before
    finally:
        alone.close()


def test_a_held_run_uses_no_cpu_while_counted():
    layout = isolation().cgroup
    if layout is None or "cpu" not in layout.parents:
        pytest.skip("no cgroup with the cpu controller here")
    import subprocess

    group = cgroup.make_cgroup(layout, records.Limits())
    assert group is not None
    procs = " ".join(f"echo $$ > {p};" for p in group.procs_files())
    spin = subprocess.Popen(["/bin/sh", "-c", f"{procs} exec sh -c 'while :; do :; done'"])
    try:
        time.sleep(0.3)
        group.hold_cpu(True)
        time.sleep(0.1)  # the quota's current period may still run out
        before = group.cpu_time_s()
        time.sleep(1.0)
        held = group.cpu_time_s() - before  # type: ignore[operator]
        group.hold_cpu(False)
        time.sleep(0.5)
        after = group.cpu_time_s() - before - held  # type: ignore[operator]
        assert held < 0.05 and after > 0.1, (held, after)
    finally:
        spin.kill()
        spin.wait()
        group.remove()


OWN_TABLES = r"""
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>
static int opener(void*) {  // a thread with a descriptor table of its own
    for (int i = 0; i < 240; i++) open("/dev/null", O_RDONLY);
    sleep(4);
    return 0;
}
int main() {
    int fd0 = open("f", O_CREAT | O_RDWR, 0600);
    write(fd0, "x", 1);
    close(fd0);
    for (int t = 0; t < {threads}; t++) {
        char* stack = (char*)std::malloc(1 << 16);
        if (clone(opener, stack + (1 << 16), CLONE_VM | CLONE_SIGHAND | CLONE_THREAD, nullptr) < 0)
            std::puts("clone failed");
    }
    int held = 0;
    for (int i = 0; i < {mapped}; i++) {
        int fd = open("f", O_RDONLY);
        void* m = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (m != MAP_FAILED) held++;
    }
    std::printf("mapped %d\n", held);
    std::fflush(stdout);
    sleep(3);
    std::puts("done");
    std::fflush(stdout);
    _exit(0);
}
"""


def test_threads_with_their_own_descriptor_tables_count(level):
    """A thread made without ``CLONE_FILES`` has a descriptor table of its own, which
    ``/proc/<pid>/fd`` does not show: 48 threads holding 240 descriptors each and 32,775
    mappings (under a 38,535 share) held 11,520 more than was counted, exit 0. Now each
    thread's table that is not its process's (``kcmp``) is counted too."""
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    share, threads = _share(), 48
    hidden = threads * 240
    if hidden < share // 8:
        pytest.skip(f"a share of {share}: the threads' descriptors are too few to matter")
    mapped = share - hidden // 2  # the mappings alone under the share, with the threads over
    program = OWN_TABLES.replace("{threads}", str(threads)).replace("{mapped}", str(mapped))
    res = multiple.run_program("cpp", program)
    assert "clone failed" not in res.stdout, res
    assert res.ending is not None and res.ending.kind == "files", (level, res)


def test_anonymous_mappings_count_so_no_count_reads_more_than_the_share():
    """Padding with anonymous mappings made each count read them all (seconds for a run of
    many processes); counted, a count stops within the share's lines."""
    import subprocess
    import sys

    code = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.mmap.restype = ctypes.c_void_p\n"
        "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,"
        " ctypes.c_int, ctypes.c_long]\n"
        "libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]\n"
        "a = libc.mmap(None, 4000 * 4096, 1, 0x22, -1, 0)\n"  # PROT_READ, PRIVATE|ANONYMOUS
        "for i in range(0, 4000, 2):\n"
        "    libc.mprotect(a + i * 4096, 4096, 0)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert filetable.files_held([proc.pid], 10**9) >= 4000  # 4,000 mappings, none a file
        assert filetable.files_held([proc.pid], 100) == 101  # stops just past its bound
    finally:
        proc.kill()
        proc.wait()
