"""SIGTERM (a scheduler's time limit, scancel, docker stop, `timeout`) during training: the
same clean exit as Ctrl-C, said in one line (`terminated`, exit 143), the trainer closed, the
run resumable. It died silently (exit -15), the log ending on a progress line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "reflection_small.jsonl"


@pytest.mark.slow
def test_sigterm_mid_run_says_terminated_and_leaves_it_resumable(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(DATA.read_text() * 8)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "reflectioncoder.cli", "train", "--preset", "tiny",
            "--set", f"data.files=[{data}]", "--set", f"checkpoint.out_dir={out}",
            "--set", "checkpoint.save_every=2", "--set", "train.epochs=500",
            "--set", "logging.report_to=[none]", "--no-progress"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    # the step under way finished and saved first (tests/test_launch7_preemption.py)
    last = err.splitlines()[-1]
    assert re.fullmatch(r"reflectioncoder train: terminated \(step (\d+) saved: --resume "
                        r"continues from .*/checkpoints/step-0*\1\)", last), last  # fmt: skip
    listed = subprocess.run([sys.executable, "-m", "reflectioncoder.cli", "runs", str(out)],
                            capture_output=True, text=True, cwd=REPO, env=env)  # fmt: skip
    assert "--resume continues from" in listed.stdout, listed.stdout + listed.stderr
