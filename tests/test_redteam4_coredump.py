"""Red team, round 4: core dumps run a host program as root. Where the kernel's
``core_pattern`` pipes dumps to a program (Ubuntu's apport, systemd-coredump: CI machines),
the kernel starts it on the host, as root and outside the run's cgroup, for every process
that crashes, whatever its RLIMIT_CORE: only the value 1 stops it (the kernel's own guard
against recursive dumps). A run's processes had RLIMIT_CORE 0: each crash of a sample (a C++
segfault, an abort, a shell killing itself) started the host's helper, which reads the whole
process's memory, compresses it and writes it to the host's disk, with CPU and disk no limit
of the run counts. Now every process of a run has RLIMIT_CORE 1 (no dump, to a pipe or a
file) and the box's seccomp filter refuses to change it (``setrlimit``/``prlimit64`` on
RLIMIT_CORE). The test pipes dumps to a recorder for a few seconds (the host's pattern is put
back after), crashes samples at each level, and reads what the recorder saw.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple
from reflectioncoder.eval.sandbox import runuser

_PATTERN = Path("/proc/sys/kernel/core_pattern")

pytestmark = [
    pytest.mark.slow,  # it changes a setting of the whole machine for a few seconds
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.access(_PATTERN, os.W_OK),
        reason="setting core_pattern is root's",
    ),
]
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

# each crashes after asking for dumps of any size (0: no file, still the pipe), or as it is
CRASHES = {
    "cpp": r"""
#include <cstdlib>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
int main() {
    if (fork() == 0) abort();  // as it is
    struct rlimit zero = {0, 0};
    setrlimit(RLIMIT_CORE, &zero);  // libc: prlimit64
    prlimit(0, RLIMIT_CORE, &zero, nullptr);
    syscall(SYS_setrlimit, RLIMIT_CORE, &zero);  // the old call
    sleep(1);
    abort();
}
""",
    "sh": "bash -c 'kill -SEGV $$'; ulimit -c 0; ulimit -Hc 0; kill -ABRT $$\n",
    "python": (
        "import os, resource\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
        "except (OSError, ValueError) as exc:\n"
        "    print('refused', exc, flush=True)\n"
        "os.abort()\n"
    ),
}


@pytest.fixture
def recorded(tmp_path):
    """Dumps piped to a recorder (it writes the crashed process's uid) while the test runs."""
    log = tmp_path / "dumps.log"
    recorder = tmp_path / "record-dump"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> {log}\ncat > /dev/null\n')
    recorder.chmod(0o755)
    before = _PATTERN.read_text()
    _PATTERN.write_text(f"|{recorder} %u")
    try:
        yield log
    finally:
        _PATTERN.write_text(before.rstrip("\n"))
    assert _PATTERN.read_text() == before


def _run_uids_recorded(log: Path) -> list[int]:
    lines = log.read_text().split() if log.exists() else []
    return [int(u) for u in lines if int(u) in runuser.RUN_UIDS]


def test_a_crash_starts_no_host_program(level, recorded):
    ran = []
    for language, program in CRASHES.items():
        if multiple.toolchain_problem(language):
            continue
        res = multiple.run_program(language, program, run_s=10)
        assert res.exit_code != 0, (language, res)  # it crashed
        ran.append(language)
    assert ran
    time.sleep(1)  # the kernel starts the helper as the process dies
    assert _run_uids_recorded(recorded) == [], f"{level}: dumps of {ran}"
