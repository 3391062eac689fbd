"""A run with trackio ended its log with trackio's `* Run finished. Uploading logs to Trackio`
twice: once when the trainer closed its run, again after `done:` from trackio's own exit
handler, which still held the run as its current one and finished it a second time."""

from __future__ import annotations

import os
import subprocess
import sys


def test_trackio_finishes_its_run_once(tmp_path):
    code = (
        "from pathlib import Path\n"
        "from reflectioncoder.config import LoggingConfig\n"
        "from reflectioncoder.train.metrics import MetricsLogger\n"
        "cfg = LoggingConfig(report_to=['trackio'], progress=False, plot=False, run_name='toy')\n"
        "m = MetricsLogger(Path('run'), cfg, total_steps=1, run_config={'seed': 1})\n"
        "m.log({'step': 1, 'loss': 2.0, 'kl': 0.1, 'samples': 2, 'tokens': 9})\n"
        "m.close(plot=False)\n"
        "print('done: closed')\n"
    )
    env = dict(os.environ, TRACKIO_DIR=str(tmp_path / "trackio"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-2000:]
    assert log.count("Run finished") == 1, log
    assert log.index("Run finished") < log.index("done: closed")
