"""``python -m reflectioncoder.launch`` is torchrun for a reflectioncoder command whose failure
ends in one readable line: torchrun printed its own Python traceback (``raise
ChildFailedError``, of torchrun's code) and a report of every rank after the rank's one-line
error, and exited 1 whatever the rank's code. Here a real 2-process launch of ``train`` with a
misspelt field ends with the rank's line, then ``reflectioncoder launch: rank N failed (exit
code 2 ...): <that line>``, no traceback, and exits 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch.distributed.run")

LAUNCH = [sys.executable, "-m", "reflectioncoder.launch"]


def test_a_failed_launch_ends_in_one_line_with_the_ranks_exit_code(tmp_path):
    argv = [*LAUNCH, "--nproc_per_node", "2", "train", "--preset", "tiny",
            "--set", "optim.lrr=1", "--set", f"checkpoint.out_dir={tmp_path / 'run'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr, done.stderr
    said = "optim.lrr: unknown field (did you mean optim.lr?)"
    assert re.fullmatch(
        r"reflectioncoder launch: rank [01] failed \(exit code 2; 1 other rank\(s\) failed too\): "
        rf"reflectioncoder train: --set optim\.lrr=1: {re.escape(said)}.*",
        lines[-1],
    ), lines[-1]
    # The ranks leave their line to the launcher (it was said twice: rank 0's, then ours),
    # and torchrun's own words for what our line says are not shown
    assert not any("reflectioncoder train:" in line for line in lines[:-1]), lines
    assert not any("no error file defined for parent" in line for line in lines)
    assert not any("closing signal SIGTERM" in line for line in lines), lines
    assert not (tmp_path / "run").exists()


def test_no_command_named_is_one_line():
    done = subprocess.run([*LAUNCH, "--nproc_per_node", "2"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "reflectioncoder launch: name the command to launch after torchrun's options, e.g. "
        "python -m reflectioncoder.launch --nproc_per_node 8 train --config configs/paper.yaml"
    ]
