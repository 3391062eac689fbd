"""`train ... > log.txt` with trackio: its start-up hint (`trackio show --project ...`) came in
bold orange escape codes into the log file (issue 11: logs for people, no escape codes when
output is not a terminal). And trackio's `* Run finished. Uploading logs to Trackio` came
twice: again after `done:`, from trackio's exit handler, which still held the run as its
current one (journey8)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_trackio_prints_no_escape_codes_into_a_file_and_finishes_once(tmp_path):
    code = (
        "from pathlib import Path\n"
        "from reflectioncoder.config import LoggingConfig\n"
        "from reflectioncoder.train.metrics import MetricsLogger\n"
        "cfg = LoggingConfig(report_to=['trackio'], progress=False, plot=False, run_name='toy')\n"
        "m = MetricsLogger(Path('run'), cfg, total_steps=1, run_config={'seed': 1})\n"
        "m.log({'step': 1, 'loss': 2.0, 'kl': 0.1, 'samples': 2, 'tokens': 9})\n"
        "m.close(plot=False)\n"
        "print('done: closed', flush=True)\n"
    )
    env = dict(os.environ, TRACKIO_DIR=str(tmp_path / "trackio"), OMP_NUM_THREADS="1")
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=out, stderr=out,
            timeout=300,
        )  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    assert "trackio show" in text  # the hint is kept, plain
    assert "\x1b" not in text
    assert text.count("Run finished") == 1, text
    assert text.index("Run finished") < text.index("done: closed")
