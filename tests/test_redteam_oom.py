"""Memory pressure a sample causes lands on the sample: when the scorer's own cgroup has a
memory limit (a container's), a box that fills its tmpfs (files that count for no process)
pushed the cgroup over it and the kernel's OOM killer chose the scorer, the biggest process,
ending the whole evaluation. Every sandboxed process is now the OOM killer's first choice
(``oom_score_adj`` 1000, set before the drop). Where root holds CAP_SYS_RESOURCE the program
cannot lower it; where it does not (a default Docker container), a program that lowers its own
score is left to the OOM killer's size rule, stated in docs/evaluation.md."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox.cgroup import cgroup_layout

REPO = Path(sandbox.__file__).resolve().parents[3]

# The scorer: 300 MiB of its own, then one sample that writes 18 files of 60 MiB to its
# /dev/shm and /tmp (its own limit, 1 GiB, is above what the scorer's cgroup has left)
SCORER = r"""
import sys
ballast = bytearray(300 << 20)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
from reflectioncoder.eval import sandbox
fill = '''
chunk = b"x" * (1 << 20)
for d in ("/dev/shm", "/tmp"):
    for k in range(9):
        with open(f"{d}/fill{k}", "wb") as f:
            for _ in range(60):
                f.write(chunk)
print("filled")
'''
res = sandbox.run_python(fill, timeout_s=30, memory_mb=1024)
print("scorer survived:", res.ending.kind)
"""


def _memory_parent() -> Path:
    layout = cgroup_layout()
    if os.geteuid() != 0 or layout is None or layout.version != 1:
        pytest.skip("needs root and a cgroup-v1 memory hierarchy to nest a limited cgroup in")
    if "memory" not in layout.parents:
        pytest.skip("no memory controller")
    return layout.parents["memory"]


def test_a_box_filling_its_tmpfs_cannot_get_the_scorer_killed():
    ran = run_in_limited_cgroup(SCORER, 700 << 20, "auto", "rc-redteam")
    assert ran.returncode == 0, (ran.returncode, ran.stderr[-2000:])
    assert "scorer survived: memory" in ran.stdout, ran.stdout


def run_in_limited_cgroup(
    script: str, limit_bytes: int, level: str, prefix: str
) -> subprocess.CompletedProcess:
    """``script`` run by a Python started inside a new cgroup of ``limit_bytes`` of memory
    (a memory-limited container), at sandbox level ``level``; the cgroup removed after."""
    limited = _memory_parent() / f"{prefix}-{uuid.uuid4().hex[:12]}"
    limited.mkdir()
    try:
        (limited / "memory.limit_in_bytes").write_text(str(limit_bytes))

        def enter() -> None:
            (limited / "cgroup.procs").write_text("0")

        env = {**os.environ, "PYTHONPATH": str(REPO), "REFLECTIONCODER_SANDBOX": level}
        return subprocess.run(
            [sys.executable, "-c", script],
            preexec_fn=enter,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        _remove(limited)


def _remove(cgroup: Path) -> None:
    """The test's cgroup and what a killed scorer left in it (its box's processes may take a
    moment to go)."""
    for _ in range(200):
        try:
            for sub in cgroup.glob("rc-sandbox-*"):
                sub.rmdir()
            cgroup.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def test_the_program_cannot_lower_its_oom_score():
    res = sandbox.run_python(
        "import os\n"
        "print(open('/proc/self/oom_score_adj').read().strip())\n"
        "try:\n"
        "    fd = os.open('/proc/self/oom_score_adj', os.O_WRONLY)\n"
        "    os.write(fd, b'0')\n"
        "    print('lowered')\n"
        "except OSError:\n"
        "    print('refused')\n",
        timeout_s=10,
    )
    lines = res.stdout.split()
    assert lines[0] == "1000", res
    if _has_cap_sys_resource():  # written with it, only CAP_SYS_RESOURCE could lower it
        assert lines[1] == "refused", res


def _has_cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    caps = int(
        next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16
    )
    return bool(caps >> 24 & 1)  # CAP_SYS_RESOURCE
