"""Experiment trackers (``logging.report_to``): TensorBoard, Weights & Biases, MLflow, trackio.

Each is driven through its own API behind one small interface, ``Reporter``: ``log(scalars,
step)`` and ``close()``. The run's config goes to each as parameters when it starts. Every one
works offline by default, and each environment variable the tracker itself reads still wins:

    tensorboard  OUT/tensorboard                 (tensorboard --logdir OUT/tensorboard)
    wandb        OUT/wandb, offline mode         (WANDB_MODE=online to sync; `wandb sync` later)
    mlflow       OUT/mlruns, a local file store  (MLFLOW_TRACKING_URI for a server or database)
    trackio      trackio's local store           (TRACKIO_DIR; `trackio show`)

Only rank 0 reports (the metrics logger of other ranks is silent). A tracker whose package is
missing stops the run at start-up, in one line naming the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from reflectioncoder.errors import UserError, atomic_write_text
from reflectioncoder.train.tracker_names import (
    end_abandoned_mlflow_run,
    ending_status,
    mlflow_client,
    run_name,
)

log = logging.getLogger("reflectioncoder.train")

# Tracker -> the module it needs (and the setup.py extra that installs it).
PACKAGES = {name: name for name in ("tensorboard", "wandb", "mlflow", "trackio")}
MLFLOW_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
RUN_IDS = "tracker_runs.json"  # OUT/: each tracker's run id, which a resume continues
RUN_NAME = "run_name"  # in RUN_IDS: the name the tracker runs were started under
# Config fields a --resume may change that leave each step's logged values as they were (how the
# step runs, where it is saved, what is logged); any other change gives the trackers new runs.
SAME_VALUES = ("logging.", "checkpoint.", "distributed.", "train.threads", "model.compile")
SAME_VALUES += ("model.gradient_checkpointing", "model.checkpointing_policy", "data.cache_dir")


class Reporter(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def check_installed(report_to: list[str]) -> None:
    """One line naming the first tracker in ``report_to`` whose package is not importable."""
    for name in report_to:
        module = PACKAGES.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            raise UserError(
                f"{name} is not installed: pip install 'reflectioncoder[{name}]' "
                f"(or remove {name} from the list)",
                field="logging.report_to",
            )


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``; lists and dicts below a section
    (``model.arch``, ``data.files``) stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            flat.update(flat_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def scalars_of(row: dict[str, Any], section: str = "train") -> dict[str, float]:
    """The finite numbers of a metrics row, as ``SECTION/NAME`` (bools and the step left out;
    a validation row's ``val_loss`` is ``val/loss``)."""
    return {
        f"{section}/{key.removeprefix(section + '_')}": float(value)
        for key, value in row.items()
        if key != "step"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def changes_values(changed: list[str]) -> bool:
    """Whether a resume that changes the config fields ``changed`` (``optim.lr``, ...) logs
    other values than the run it resumes for the steps after its checkpoint."""
    return any(not field.startswith(SAME_VALUES) for field in changed)


def _sent_before(scalars: dict[str, float], step: int, sent: dict[str, int]) -> bool:
    """Whether the killed run this one resumes sent ``scalars`` of ``step`` to a tracker that
    keeps every point (MLflow, trackio): ``sent`` (section -> its last step that the tracker
    holds). Such steps are not sent again: the resume repeats their values, and each would be
    there twice. (TensorBoard purges them instead; W&B keeps the first of a step.)"""
    section = next(iter(scalars), "train").split("/")[0]
    return step <= sent.get(section, 0)


class TensorBoardReporter:
    def __init__(self, out_dir: Path, config: dict[str, Any], start_step: int) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events the killed run wrote after its checkpoint.
        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1)
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", f"```yaml\n{text}```", start_step)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(
        self, out_dir: Path, config: dict[str, Any], project: str, name: str, run_id: str | None
    ) -> None:
        import wandb

        resumed = {"id": run_id, "resume": "allow"} if run_id else {}
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", project),
            name=name,
            # absolute: wandb's service, one per process, resolves a relative folder in the
            # working directory of the process's first run, not this one's
            dir=str(Path(os.environ.get("WANDB_DIR", out_dir)).resolve()),
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
            **resumed,
        )
        self.run_id = self.run.id
        self.continued = run_id is not None  # an earlier launch's run, which holds its steps

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish(exit_code=0 if ending_status() == "FINISHED" else 1)


class MlflowReporter:
    def __init__(
        self,
        out_dir: Path,
        config: dict[str, Any],
        project: str,
        name: str,
        run_id: str | None,
        earlier_id: str | None = None,
    ) -> None:
        """``run_id``: the run to continue (None: a new one); ``earlier_id``: the run an
        earlier launch of this run folder started (marked KILLED if left RUNNING and not
        continued)."""
        from mlflow.entities import Metric, Param

        self._metric = Metric
        self.client = mlflow_client(out_dir)
        project = os.environ.get("MLFLOW_EXPERIMENT_NAME", project)  # as HF Trainer reads it
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(project)
        )
        self.sent: dict[str, int] = {}
        self.continued = run_id is not None and _mlflow_run_exists(self.client, run_id)
        end_abandoned_mlflow_run(self.client, earlier_id, run_id if self.continued else None)
        if self.continued:
            self.run_id = run_id  # its params are logged; MLflow refuses to change one
            self.client.update_run(run_id, status="RUNNING")
            for section in ("train", "val"):
                history = self.client.get_metric_history(run_id, f"{section}/loss")
                self.sent[section] = max((m.step for m in history), default=0)
            return
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        params = [Param(k, str(v)) for k, v in flat_config(config).items()]
        for i in range(0, len(params), MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + MLFLOW_PARAMS_PER_BATCH])

    def log(self, scalars: dict[str, float], step: int) -> None:
        import time

        if _sent_before(scalars, step, self.sent):
            return
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status=ending_status())  # Ctrl-C: KILLED


def _mlflow_run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:  # another store (MLFLOW_TRACKING_URI changed), or deleted
        return False
    return True


class TrackioReporter:
    def __init__(self, config: dict[str, Any], project: str, name: str, resume: bool) -> None:
        import trackio

        with _plain_stdout():
            self.run = trackio.init(
                project=project,
                name=name,
                config=flat_config(config),
                embed=False,
                resume="allow" if resume else "never",  # runs are known by name in a project
            )
        self.sent: dict[str, int] = {}
        if resume:  # what its store holds (a killed run's last points may never have left it)
            from trackio.sqlite_storage import SQLiteStorage

            run_id = getattr(self.run, "id", None)  # the run resumed (not a namesake)
            for point in SQLiteStorage.get_logs(project, name, run_id=run_id):
                for section in {key.split("/")[0] for key in point if "/" in key}:
                    self.sent[section] = max(self.sent.get(section, 0), int(point["step"]))
        self.continued = bool(self.sent)

    def log(self, scalars: dict[str, float], step: int) -> None:
        if not _sent_before(scalars, step, self.sent):
            self.run.log(scalars, step=step)

    def close(self) -> None:
        import trackio
        from trackio import context_vars

        if context_vars.current_run.get() is self.run:
            trackio.finish()  # also forgets it: trackio's exit handler would finish it again
        else:
            self.run.finish()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@contextlib.contextmanager
def _plain_stdout() -> Iterator[None]:
    """What a tracker prints inside, without its colour codes when stdout is not a terminal
    (trackio prints its `trackio show` hint in bold orange: escape codes in a log file)."""
    if sys.stdout.isatty():
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        sys.stdout.write(_ANSI.sub("", buffer.getvalue()))


def make_reporters(
    report_to: list[str],
    out_dir: str | Path,
    config: dict[str, Any],
    project: str,
    name: str | None,
    start_step: int = 0,
    history: list[dict[str, Any]] | None = None,
    new_runs: bool = False,
    resumed: bool = False,
) -> list[Reporter]:
    """One reporter per tracker in ``report_to`` ("none" and an empty list: none). A resumed
    run (``start_step`` > 0) continues the tracker runs its folder records (``RUN_IDS``), so a
    run killed and resumed is one run in W&B, MLflow and trackio, not two; they go on under
    the run's name (``tracker_names.run_name``; ``name``: ``logging.run_name``; ``resumed``:
    a ``--resume`` launch, from a checkpoint or not).

    ``history``: the metrics rows a resume keeps (steps up to ``start_step``). A tracker run
    that does not hold them (a tracker added to ``report_to`` on resume, or ``new_runs``) gets
    them first, so that each run holds every step. ``new_runs``: the resume's config changes the
    values of the steps after its checkpoint (``changes_values``). The earlier runs keep what
    they were sent for such steps (MLflow and trackio keep every point, W&B the first, and
    MLflow never changes a parameter), so W&B, MLflow and trackio get new runs instead, under
    the new config. TensorBoard purges the old steps itself. An earlier MLflow run not
    continued, left RUNNING by a kill, is marked KILLED."""
    check_installed(report_to)
    out_dir = Path(out_dir)
    continues = start_step > 0 and not new_runs
    earlier = _recorded_run_ids(out_dir)
    recorded = earlier if continues else {}
    name = run_name(out_dir, name, earlier, resumed or start_step > 0, continues, report_to)
    made: list[Reporter] = []
    ids: dict[str, str] = {}
    for tracker in report_to:
        try:
            if tracker == "tensorboard":
                made.append(TensorBoardReporter(out_dir, config, start_step))
            elif tracker == "wandb":
                made.append(WandbReporter(out_dir, config, project, name, recorded.get(tracker)))
                ids[tracker] = made[-1].run_id
            elif tracker == "mlflow":
                run_ids = recorded.get(tracker), earlier.get(tracker)
                made.append(MlflowReporter(out_dir, config, project, name, *run_ids))
                ids[tracker] = made[-1].run_id
            elif tracker == "trackio":
                made.append(TrackioReporter(config, project, name, resume=continues))
        except Exception as err:  # its own message (W&B online without a key, a server down)
            for reporter in made:
                reporter.close()
            message = " ".join(str(err).split()) or type(err).__name__
            raise UserError(
                f"{tracker} did not start: {message}", field="logging.report_to"
            ) from err
    if report_to:  # TensorBoard alone too: a tracker added on --resume gets the run's name
        atomic_write_text(out_dir / RUN_IDS, json.dumps({RUN_NAME: name, **ids}, indent=1))
    for reporter in made if start_step > 0 and history else []:
        if not isinstance(reporter, TensorBoardReporter) and not reporter.continued:
            _replay(reporter, history)
    return made


def _replay(reporter: Reporter, rows: list[dict[str, Any]]) -> None:
    """``rows`` of metrics.jsonl (training and validation rows) into a new tracker run."""
    for row in rows:
        held_out = "val_loss" in row
        reporter.log(scalars_of(row, "val" if held_out else "train"), row["step"])


def _recorded_run_ids(out_dir: Path) -> dict[str, str]:
    try:
        ids = json.loads((out_dir / RUN_IDS).read_text())
    except (OSError, ValueError):  # none recorded, or damaged: new tracker runs
        return {}
    return ids if isinstance(ids, dict) else {}
