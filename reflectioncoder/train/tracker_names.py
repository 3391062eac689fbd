"""The name a run's tracker runs (W&B, MLflow, trackio) go under, and how a launch ends them.

A fresh run is named after its folder's parent, its folder and when it started
(``runs/demo/train`` -> ``demo-train-20261206-0153``): the documented folders all end in
``train``, and runs named after the folder alone could not be told apart. ``logging.run_name``
names it instead. The name is recorded in OUT/tracker_runs.json, and every later launch of the
run (``--resume``) goes on under it: trackio knows a run by its name. A folder written before
the name was recorded is assumed to carry the name such runs started under (``logging.run_name``,
else the folder's name), and the log says so."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("reflectioncoder.train")

NAMED = ("wandb", "mlflow", "trackio")  # the trackers whose runs have a name


def default_run_name(out_dir: Path, now: float | None = None) -> str:
    """``PARENT-FOLDER-YYYYmmdd-HHMM`` (local time) for the run folder ``out_dir``."""
    folder = out_dir.resolve()
    when = time.strftime("%Y%m%d-%H%M", time.localtime(now))
    parts = [p for p in (folder.parent.name, folder.name) if p]
    return "-".join([*parts, when])


def run_name(
    out_dir: Path,
    given: str | None,
    recorded: dict[str, Any],
    resumed: bool,
    continues: bool,
    report_to: list[str],
) -> str:
    """The name this launch's tracker runs go under. ``given``: ``logging.run_name``;
    ``recorded``: OUT/tracker_runs.json; ``resumed``: a ``--resume`` launch; ``continues``: it
    continues the recorded tracker runs (from a checkpoint, the same values)."""
    earlier = recorded.get("run_name")
    earlier = earlier if isinstance(earlier, str) and earlier else None
    if continues and earlier is not None:
        return _continued_name(earlier, given or earlier, report_to)
    if continues:  # a folder from before run names were recorded
        return _assumed_name(out_dir, given, report_to)
    if given:
        return given
    if resumed and earlier is not None:  # new tracker runs of the same run: named as before
        return earlier
    return default_run_name(out_dir)


def _continued_name(earlier: str, name: str, report_to: list[str]) -> str:
    """The run's own name (``earlier``), whatever ``logging.run_name`` now says (a requeued
    job's script may name each launch anew): trackio would split the run in two, W&B rename
    it. Said in one line."""
    if earlier != name and any(t in report_to for t in NAMED):
        log.warning(
            "--resume: the tracker runs continue as %r, the run's name (logging.run_name now "
            "gives %r; a run keeps its name: a new name starts with a new checkpoint.out_dir)",
            earlier, name,
        )  # fmt: skip
    return earlier


def _assumed_name(out_dir: Path, given: str | None, report_to: list[str]) -> str:
    """A resumed folder whose tracker_runs.json records no name (written before names were
    recorded): its runs were named by ``logging.run_name``, else by the folder's name."""
    name = given or out_dir.resolve().name
    if any(t in report_to for t in NAMED):
        source = "logging.run_name" if given else "the run folder's name"
        log.warning(
            "--resume: %s records no run name (a run folder from an earlier reflectioncoder, "
            "or one without trackers): "
            "the tracker runs continue as %r, %s, as such runs were named; if they were named "
            "otherwise, resume with --set logging.run_name=THAT_NAME",
            out_dir / "tracker_runs.json", name, source,
        )  # fmt: skip
    return name


def ending_status() -> str:
    """How the run ends, for the trackers (MLflow's run status): called while the launch
    closes, inside its ``finally``. Ctrl-C, SIGTERM: KILLED; an error: FAILED."""
    error = sys.exc_info()[1]
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


def mlflow_client(out_dir: Path) -> Any:
    """The MLflow client of a run folder's runs: $MLFLOW_TRACKING_URI, else OUT/mlruns."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        # MLflow 3 refuses its file store unless asked for it: asking is the offline mode.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (out_dir / "mlruns").resolve().as_uri()
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def end_abandoned_mlflow_run(client: Any, run_id: str | None, continued_id: str | None) -> bool:
    """An earlier launch's MLflow run that this launch does not continue (a ``--resume`` with
    no checkpoint yet, a resume that starts new runs, ``--overwrite``), left RUNNING by a kill,
    marked KILLED: it would stay RUNNING forever. Whether it was."""
    if not run_id or run_id == continued_id:
        return False
    from mlflow.exceptions import MlflowException

    try:
        info = client.get_run(run_id).info
        if info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status="KILLED")
    except MlflowException:  # another store (MLFLOW_TRACKING_URI changed), or deleted
        return False
    log.info("mlflow: the earlier launch's run %s was left RUNNING (killed): marked KILLED",
             run_id)  # fmt: skip
    return True


def end_killed_launch(out_dir: Path) -> str | None:
    """After a launch whose ranks have all ended: the run folder's MLflow run, left RUNNING by
    a rank 0 killed outright (the OOM killer, ``kill -9``), marked KILLED now rather than by
    the next launch; its id (None: none was left RUNNING). Only while no launch trains in the
    folder (its lock, OUT/.lock, is free): a second launch refused there leaves the first
    one's run alone. A ``--resume`` continues the run as before (RUNNING again)."""
    try:
        ids = json.loads((out_dir / "tracker_runs.json").read_text(encoding="utf-8"))
        lock = (out_dir / ".lock").open("r")  # run_folder.LOCK_FILE; never made here
    except (OSError, ValueError):  # no tracker runs recorded, or no run started here
        return None
    with lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a launch holds the folder: its run is alive
            return None
        run_id = ids.get("mlflow") if isinstance(ids, dict) else None
        if not isinstance(run_id, str):
            return None
        with contextlib.suppress(ImportError):  # mlflow uninstalled since
            if end_abandoned_mlflow_run(mlflow_client(out_dir), run_id, None):
                return run_id
    return None
