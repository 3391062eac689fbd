"""The tracker runs of a run folder: named so a person can tell them apart, ended as they end.

- Every documented run folder ends in ``train`` (``runs/demo/train``, ``runs/smollm2/train``), and
  tracker runs were named after the folder alone: every one was "train". A fresh run is now
  ``PARENT-FOLDER-YYYYmmdd-HHMM`` unless ``logging.run_name`` names it; a resume goes on under it.
- A run folder written before the name was recorded (OUT/tracker_runs.json without run_name, or
  none) is resumed under the name its runs started with (the folder's name), said in one line:
  with today's default name trackio would have split the run in two.
- A run killed while logging to MLflow and restarted with ``--resume`` before its first
  checkpoint left the killed MLflow run RUNNING forever: it is marked KILLED; a run ended by
  Ctrl-C is KILLED, not FINISHED.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_reporters import trackio_store

from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import MetricsLogger
from reflectioncoder.train.reporters import RUN_IDS
from reflectioncoder.train.tracker_names import default_run_name


def _row(step: int) -> dict:
    return {"step": step, "loss": 10.0 - step, "kl": 0.1, "samples": 2, "tokens": 9}


def _mlflow(out: Path):
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    return MlflowClient((out / "mlruns").resolve().as_uri())


def _recorded(out: Path) -> dict:
    return json.loads((out / RUN_IDS).read_text())


def test_the_default_name_holds_the_parent_folder_and_the_time(tmp_path):
    name = default_run_name(tmp_path / "demo" / "train", now=0.0)
    assert re.fullmatch(r"demo-train-\d{8}-\d{4}", name), name
    assert name != default_run_name(tmp_path / "smollm2" / "train", now=0.0)


@pytest.fixture
def mlflow_env(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def test_a_run_in_a_train_folder_is_not_named_train_and_its_resume_keeps_the_name(
    tmp_path, mlflow_env
):
    out = tmp_path / "demo" / "train"
    cfg = LoggingConfig(report_to=["mlflow"], progress=False, plot=False)
    first = MetricsLogger(out, cfg, total_steps=4, run_config={"seed": 1})
    for step in (1, 2, 3):
        first.log(_row(step))
    first.close(plot=False)
    name, run_id = _recorded(out)["run_name"], _recorded(out)["mlflow"]
    assert name.startswith("demo-train-") and name != "train"
    assert _mlflow(out).get_run(run_id).info.run_name == name

    resumed = MetricsLogger(out, cfg, 4, start_step=2, run_config={"seed": 1}, resumed=True)
    resumed.log(_row(3))
    resumed.close(plot=False)
    assert _recorded(out) == {"run_name": name, "mlflow": run_id}  # the same run, same name


def test_a_killed_mlflow_run_restarted_without_a_checkpoint_is_marked_killed(
    tmp_path, mlflow_env, caplog
):
    cfg = LoggingConfig(report_to=["mlflow"], progress=False, plot=False)
    killed = MetricsLogger(tmp_path, cfg, total_steps=4, run_config={"seed": 1})
    killed.log(_row(1))  # killed here: never closed, before its first checkpoint
    killed_id = _recorded(tmp_path)["mlflow"]
    assert _mlflow(tmp_path).get_run(killed_id).info.status == "RUNNING"

    with caplog.at_level(logging.INFO, logger="reflectioncoder.train"):
        again = MetricsLogger(tmp_path, cfg, 4, start_step=0, run_config={"seed": 1}, resumed=True)
    for step in (1, 2, 3, 4):
        again.log(_row(step))
    again.close(plot=False)
    client = _mlflow(tmp_path)
    assert client.get_run(killed_id).info.status == "KILLED"
    new_id = _recorded(tmp_path)["mlflow"]
    assert new_id != killed_id and client.get_run(new_id).info.status == "FINISHED"
    assert f"the earlier launch's run {killed_id} was left RUNNING (killed): marked KILLED" in (
        caplog.text
    )


def test_a_run_ended_by_ctrl_c_is_killed_not_finished(tmp_path, mlflow_env):
    cfg = LoggingConfig(report_to=["mlflow"], progress=False, plot=False)
    logger = MetricsLogger(tmp_path, cfg, total_steps=4, run_config={"seed": 1})
    with pytest.raises(KeyboardInterrupt):
        try:
            logger.log(_row(1))
            raise KeyboardInterrupt
        finally:
            logger.close(plot=False)
    assert _mlflow(tmp_path).get_run(_recorded(tmp_path)["mlflow"]).info.status == "KILLED"


# Two launches of the metrics logger into one run folder, as `train` and `train --resume` drive
# it: the first as a reflectioncoder from before run names were recorded ran it (named after
# the folder, the file without run_name), the resume from step 2 as today's does.
LAUNCHES = """
import json, logging, sys
from pathlib import Path
from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import MetricsLogger
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
out, start = Path(sys.argv[1]), int(sys.argv[2])
name = out.name if start == 0 else None  # the old default: the folder's name
cfg = LoggingConfig(report_to=["trackio"], run_name=name, progress=False, plot=False)
logger = MetricsLogger(out, cfg, total_steps=5, start_step=start, run_config={"seed": 1},
                       resumed=start > 0)
for step in range(start + 1, 5 if start == 0 else 6):
    logger.log({"step": step, "loss": 10.0 - step, "kl": 0.1, "samples": 2, "tokens": 9})
logger.close(plot=False)
if start == 0:  # as the old reflectioncoder left it: trackio alone recorded nothing
    (out / "tracker_runs.json").unlink()
"""


def _launch(tmp_path, out: Path, start: int) -> str:
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHES, str(out), str(start)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_an_older_run_folder_resumes_under_its_old_name_and_says_so(tmp_path):
    pytest.importorskip("trackio")
    out = tmp_path / "toy"  # trackio_store reads the run named toy
    _launch(tmp_path, out, 0)
    said = _launch(tmp_path, out, 2)
    notes = [line for line in said.splitlines() if "records no run name" in line]
    assert (
        len(notes) == 1
        and "the tracker runs continue as 'toy', the run folder's name" in (notes[0])
    ), said
    store = trackio_store(tmp_path / "trackio")
    assert store["runs"] == ["toy"]  # one run, not a second under today's default name
    assert sorted(log["step"] for log in store["logs"]) == [1, 2, 3, 4, 5]  # each step once
    assert _recorded(out)["run_name"] == "toy"  # recorded now: the next resume needs no guess
