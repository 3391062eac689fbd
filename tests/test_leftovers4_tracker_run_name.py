"""A resume whose ``logging.run_name`` differs from the run's (a requeued job's script naming
each launch anew, or a run folder moved, whose name is the default) continues the same tracker
runs, under the run's own name, and says so in one line. trackio knows a run by its name: the
resume started a second run under the new name, splitting the run in two (W&B renamed its run).
The name the tracker runs started under is recorded in OUT/tracker_runs.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_reporters import trackio_store

from reflectioncoder.train.reporters import RUN_IDS

pytest.importorskip("trackio")

# Two launches of the trainer's metrics logger into one run folder, as `train` and
# `train --resume` drive it: steps 1-4 (the checkpoint at 2), then 3-5 under another run_name.
LAUNCHES = """
import logging, sys
from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import MetricsLogger
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
out, name, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = LoggingConfig(report_to=["trackio"], run_name=name, progress=False, plot=False)
logger = MetricsLogger(out, cfg, total_steps=5, start_step=start, run_config={"seed": 1})
for step in range(start + 1, 5 if start == 0 else 6):
    logger.log({"step": step, "loss": 10.0 - step, "kl": 0.1, "samples": 2, "tokens": 9})
logger.close(plot=False)
"""


def _launch(tmp_path, name: str, start: int) -> str:
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHES, str(tmp_path / "run"), name, str(start)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_a_resume_under_another_run_name_continues_the_trackio_run(tmp_path):
    _launch(tmp_path, "toy", 0)
    assert json.loads((tmp_path / "run" / RUN_IDS).read_text())["run_name"] == "toy"
    said = _launch(tmp_path, "toy-requeued", 2)
    notes = [line for line in said.splitlines() if "run_name" in line]
    assert notes == [
        "WARNING --resume: the tracker runs continue as 'toy', the run's name (logging.run_name "
        "now gives 'toy-requeued'; a run keeps its name: a new name starts with a new "
        "checkpoint.out_dir)"
    ], said
    store = trackio_store(tmp_path / "trackio")
    assert store["runs"] == ["toy"]  # one run, not "toy" and "toy-requeued"
    assert sorted(log["step"] for log in store["logs"]) == [1, 2, 3, 4, 5]  # each step once
    assert json.loads((tmp_path / "run" / RUN_IDS).read_text())["run_name"] == "toy"
