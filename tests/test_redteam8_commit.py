"""Red team, round 8: strict overcommit (``vm.overcommit_memory`` 2), enforced.

Round 7 named the gap in ``not_guaranteed``: on such a host the machine's commit limit is one
count, charged at each writable private mapping whether or not a page is touched, no cgroup
bounds it, and a run's processes may each commit their address-space limit (a C++ run 64 x
2 GiB), failing every other process's allocations while it runs. Now a run that has
committed more than its memory limit is stopped (``sandbox/commitguard.py``, ending
``commit``). This machine runs mode 0 and is shared, so the tests say "strict" to the guard
instead of switching the host: the mappings are made and counted for real, and in mode 0 no
other process's allocation can fail for them.
"""

from __future__ import annotations

import mmap
import os
import uuid

import pytest

from reflectioncoder.eval import multiple, sandbox
from reflectioncoder.eval.sandbox import commitguard, process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")


@pytest.fixture(params=["bwrap", "rlimits"])
def level(request, monkeypatch) -> str:
    if request.param == "bwrap" and not sandbox.bwrap_works():
        pytest.skip("bubblewrap cannot run here")
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    return request.param


@pytest.fixture
def strict_host(monkeypatch) -> None:
    """The guard sees a host in strict overcommit whose machine count is past any bound."""
    monkeypatch.setattr(commitguard, "strict", lambda *args: True)
    monkeypatch.setattr(commitguard, "machine_commit", lambda: 1 << 50)


def test_committed_counts_what_the_kernel_charges():
    before = commitguard.committed([os.getpid()], 1 << 60)
    writable = mmap.mmap(-1, 256 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    shared = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    reserved = mmap.mmap(-1, 1 << 30, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)  # not charged
    try:
        grew = commitguard.committed([os.getpid()], 1 << 60) - before
        assert 320 << 20 <= grew < (320 << 20) + (16 << 20), grew
        assert commitguard.committed([os.getpid()], 1 << 20) < before  # stops past its bound
    finally:
        for m in (writable, shared, reserved):
            m.close()


def test_the_guard_acts_only_on_a_strict_host(monkeypatch):
    guard = commitguard.CommitGuard(lambda: [os.getpid()], 1 << 20)
    monkeypatch.setattr(commitguard, "strict", lambda *args: False)
    assert not guard()  # mode 0 or 1: the kernel refuses nothing for commit
    monkeypatch.setattr(commitguard, "strict", lambda *args: True)
    monkeypatch.setattr(commitguard, "machine_commit", lambda: 1 << 19)
    assert not guard()  # the machine has committed less than the run may: no count
    monkeypatch.setattr(commitguard, "machine_commit", lambda: 1 << 40)
    assert guard() and guard.fired  # this interpreter has committed more than 1 MiB


COMMITTER = r"""
#include <cstdio>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
int main() {
    for (int p = 0; p < 6; p++) {
        if (fork() == 0) {  // 900 MiB committed, never touched: no page of memory used
            void* m = mmap(nullptr, 900L << 20, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            std::printf("%s\n", m == MAP_FAILED ? "refused" : "committed");
            std::fflush(stdout);
            sleep(3);
            _exit(0);
        }
    }
    while (wait(nullptr) > 0) {}
    std::puts("done");
}
"""


def test_a_run_committing_past_its_memory_limit_is_stopped(level, strict_host):
    """Six processes commit 900 MiB each (5.3 GiB, against a 2 GiB limit for C++) and touch
    nothing: before, the run ended exit 0 holding it all; now it is stopped, ending
    ``commit``."""
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", COMMITTER)
    assert res.ending is not None and res.ending.kind == "commit", (level, res)
    assert "done" not in res.stdout, res


HONEST = {
    "cpp": '#include <cstdio>\nint main() { std::puts("ok"); }\n',
    "cs": 'class Problem { static void Main() { System.Console.WriteLine("ok"); } }\n',
    "go": 'package main\nimport (\n"fmt"\n"testing"\n)\n'
    'func TestOk(t *testing.T) { fmt.Println("ok") }\n',
    "java": "public class Problem { public static void main(String[] a) { "
    'System.out.println("ok"); } }\n',
    "js": 'console.log("ok");\n',
    "php": '<?php\necho "ok\\n";\n',
    "python": 'print("ok")\n',
    "rs": 'fn main() { println!("ok"); }\n',
    "sh": "echo ok\n",
    "ts": 'console.log("ok");\n',
}


@pytest.mark.slow  # builds and runs a program in every installed language
@pytest.mark.parametrize("language", sorted(HONEST))
def test_honest_runs_commit_less_than_their_memory_limit(language, strict_host, monkeypatch):
    """The JVM, V8, Go, mono and glibc reserve address space without committing it: an
    honest run of each, its compiler included (a fresh program: no build cached), stays
    under its bound on a strict host."""
    problem = multiple.toolchain_problem(language)
    if problem:
        pytest.skip(problem)
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap" if sandbox.bwrap_works() else "auto")
    assert process.commitguard.strict()
    fresh = f"{'#' if language in ('python', 'sh') else '//'} {uuid.uuid4().hex}\n"  # no cache
    program = HONEST[language] + fresh  # after PHP's opening tag: a comment there too
    res = multiple.run_program(language, program)
    assert res.ending is not None and res.ending.kind == "exit", (language, res)
    assert "ok" in res.stdout.split(), (language, res)


def test_strict_is_read_from_the_host(tmp_path, monkeypatch):
    from reflectioncoder.eval.sandbox import probe

    fake = tmp_path / "overcommit_memory"
    monkeypatch.setattr(probe, "OVERCOMMIT", str(fake))
    fake.write_text("2\n")
    assert commitguard.strict(0)
    fake.write_text("0\n")
    assert not commitguard.strict(0)
    assert commitguard.strict() is False  # read again at most every 5 s: cached now
