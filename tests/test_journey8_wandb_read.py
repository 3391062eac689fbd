"""docs/training.md told a user of the offline W&B run only `wandb sync` (an account and the
network) to read it; `wandb leet inspect --summary` reads it where it is, offline. The command
the docs give runs as written on a run folder's W&B files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import MetricsLogger

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"
BIN = os.path.dirname(sys.executable)


@pytest.mark.skipif(shutil.which("wandb", path=BIN) is None, reason="wandb not installed")
def test_the_documented_offline_reader_shows_the_runs_scalars(tmp_path, monkeypatch):
    row = re.search(r"^\| `wandb` \|.*$", DOC.read_text(encoding="utf-8"), re.M).group(0)
    command = re.search(r"`(wandb leet inspect [^`]*)`", row).group(1)
    monkeypatch.chdir(tmp_path)
    cfg = LoggingConfig(report_to=["wandb"], progress=False, plot=False)
    metrics = MetricsLogger(Path("OUT"), cfg, total_steps=1, run_config={"seed": 7})
    metrics.log({"step": 1, "loss": 2.5, "kl": 0.1, "samples": 2, "tokens": 9})
    metrics.close(plot=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-1500:]
    assert re.search(r"^\s+train/loss\s+2\.5$", done.stdout, re.M), done.stdout
    assert re.search(r"^\s+seed\s+7$", done.stdout, re.M), done.stdout
