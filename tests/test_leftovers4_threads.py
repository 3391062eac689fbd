"""``evaluate --threads`` defaults to what this process may use on a shared machine: its affinity
mask capped by its cgroup's CPU quota (`docker --cpus`, a Slurm job), less the cores other
programs keep busy (``cpus.default_threads``, training's rule too); OMP_NUM_THREADS wins when
set. It was torch's default, every core of the host: on a 64-core node with a 4-CPU quota, 64
threads fighting over 4 CPUs. The quota is read as the kernel writes it (cgroup v2 ``cpu.max``,
v1 ``cpu.cfs_quota_us``), and a real run in a 1-CPU cgroup generates with 1 thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from reference.serialise import SPECIALS

from reflectioncoder.cpus import cgroup_cpu_quota, usable_cores
from reflectioncoder.testing.tiny_model import save_tiny_model


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_quota_the_tightest_along_the_path(tmp_path):
    proc = _tree(tmp_path, {"proc": "0::/user.slice/job\n"}) / "proc"
    root = _tree(tmp_path / "cg", {"cpu.max": "max 100000\n",
                                   "user.slice/cpu.max": "400000 100000\n",
                                   "user.slice/job/cpu.max": "150000 100000\n"})  # fmt: skip
    assert cgroup_cpu_quota(root, proc) == 1.5
    (root / "user.slice" / "job" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(root, proc) == 4.0  # the one above it limits it
    assert usable_cores(root, proc) == min(len(os.sched_getaffinity(0)), 4)


def test_cgroup_v1_quota_and_none(tmp_path):
    proc = _tree(tmp_path, {"proc": "4:memory:/x\n2:cpu,cpuacct:/slurm/job_7\n"}) / "proc"
    job = "cpu,cpuacct/slurm/job_7"
    root = _tree(tmp_path / "cg", {f"{job}/cpu.cfs_quota_us": "200000\n",
                                   f"{job}/cpu.cfs_period_us": "100000\n",
                                   "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                   "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})  # fmt: skip
    assert cgroup_cpu_quota(root, proc) == 2.0
    (root / job / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cores(root, proc) == len(os.sched_getaffinity(0))
    assert cgroup_cpu_quota(root, tmp_path / "no-such-file") is None


def _one_cpu_cgroup() -> Path:
    """A real cgroup v1 ``cpu`` group with a quota of one CPU (root only)."""
    mount = Path("/sys/fs/cgroup/cpu")
    if os.geteuid() != 0 or not (mount / "cpu.cfs_quota_us").is_file():
        pytest.skip("needs root and cgroup v1's cpu controller")
    group = mount / f"rc-threads-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
    except OSError as err:
        pytest.skip(f"cannot make a cgroup here: {err}")
    return group


@pytest.mark.slow  # a real evaluate process generating with a tiny model: about 30 s
def test_evaluate_in_a_one_cpu_cgroup_generates_with_one_thread(tmp_path, shared_dir):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: every default is 1 thread")
    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    model = save_tiny_model(tmp_path / "model", texts, num_layers=1, special_tokens=SPECIALS)
    group = _one_cpu_cgroup()
    out = tmp_path / "result.json"
    data = shared_dir / "evaldata"
    argv = [sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", "humaneval",
            "--model", str(model), "--limit", "1", "--max-new-tokens", "4", "--device", "cpu",
            "--data-dir", str(data), "--json", str(out), "--no-progress"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    def join_group() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                              preexec_fn=join_group)  # fmt: skip
    finally:
        group.rmdir()
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text())["generation"]["threads"] == 1
