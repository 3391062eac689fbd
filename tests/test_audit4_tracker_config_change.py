"""A --resume that changes the config (a lower lr from an earlier checkpoint) gives the trackers
new runs holding the values that trained the model.

The earlier run had sent its own values for the steps after the checkpoint; MLflow and trackio
keep every point, W&B keeps the first of a step and MLflow never changes a parameter. Continuing
those runs showed the old losses, lr and config for steps the resume trained again otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import ARCH
from test_reporters import _wandb, trackio_store

from reflectioncoder.config import LoggingConfig
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.metrics import MetricsLogger, read_metrics
from reflectioncoder.train.reporters import RUN_IDS, changes_values


def _mlflow_run(out: Path) -> tuple[dict[int, float], dict[str, str]]:
    """train/loss by step and the params of the MLflow run OUT/tracker_runs.json names."""
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    run_id = json.loads((out / RUN_IDS).read_text())["mlflow"]
    client = MlflowClient((out / "mlruns").resolve().as_uri())
    history = client.get_metric_history(run_id, "train/loss")
    return {m.step: m.value for m in history}, client.get_run(run_id).data.params


def _row(step: int, loss: float) -> dict:
    return {"step": step, "loss": loss, "kl": 0.1, "samples": 2, "tokens": 9}


def test_only_changes_that_move_the_values_start_new_runs():
    assert not changes_values(["logging.progress", "checkpoint.save_every", "train.threads"])
    assert not changes_values(["distributed.zero_stage", "model.compile"])
    assert changes_values(["optim.lr"]) and changes_values(["logging.log_every", "mask.kl"])


def test_a_resume_with_new_values_gets_a_new_mlflow_run_with_the_steps_before(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = LoggingConfig(report_to=["mlflow"], progress=False, plot=False)
    first = MetricsLogger(tmp_path, cfg, total_steps=4, run_config={"optim": {"lr": 1.0}})
    for step in (1, 2, 3, 4):  # checkpoint at step 2
        first.log(_row(step, 10.0 - step))
    first.close(plot=False)
    old_id = json.loads((tmp_path / RUN_IDS).read_text())["mlflow"]

    resumed = MetricsLogger(
        tmp_path, cfg, 4, start_step=2, run_config={"optim": {"lr": 0.5}}, new_tracker_runs=True
    )
    for step in (3, 4):
        resumed.log(_row(step, 20.0 + step))
    resumed.close(plot=False)

    assert json.loads((tmp_path / RUN_IDS).read_text())["mlflow"] != old_id
    losses, params = _mlflow_run(tmp_path)
    assert losses == {1: 9.0, 2: 8.0, 3: 23.0, 4: 24.0}
    assert params["optim.lr"] == "0.5"


def _argv(tmp_path: Path, out: Path, *flags: str, **extra: object) -> list[str]:
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 8, seed=0)
    sets = {"model.tokenizer_vocab_size": 400, "data.files": f"[{data}]"}
    sets.update(dict([ARCH.split("=", 1)]))
    sets.update({"checkpoint.out_dir": out, "checkpoint.save_every": 2, "train.max_steps": 4})
    sets.update({"train.samples_per_step": 2, "packing.max_tokens": 400, "logging.plot": False})
    sets.update({"logging.report_to": "[mlflow,wandb,trackio]", "logging.run_name": "toy"})
    sets.update(extra)
    return [sys.executable, "-m", "reflectioncoder.cli", *train_argv(sets, "--no-progress", *flags)]


@pytest.mark.slow  # two real runs with three trackers: about 40 s on a loaded 2-core machine
def test_resuming_an_earlier_checkpoint_with_a_new_lr_shows_the_new_values_in_each_tracker(
    tmp_path,
):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", TRACKIO_DIR=str(tmp_path / "trackio"))
    earlier = str(out / "checkpoints" / "step-000002")
    for argv in (
        _argv(tmp_path, out),
        _argv(tmp_path, out, "--resume", earlier, **{"optim.lr": 1e-4}),
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "new mlflow, wandb, trackio run(s)" in done.stderr
    rows = {r["step"]: r for r in read_metrics(out / "metrics.jsonl") if "loss" in r}
    assert sorted(rows) == [1, 2, 3, 4] and rows[4]["lr"] < 1e-4
    losses = {step: row["loss"] for step, row in rows.items()}

    mlflow_losses, params = _mlflow_run(out)
    assert mlflow_losses == pytest.approx(losses, rel=1e-6)
    assert float(params["optim.lr"]) == 1e-4

    wandb_id = json.loads((out / RUN_IDS).read_text())["wandb"]
    moved = tmp_path / "wandb-new"
    (moved / "wandb").mkdir(parents=True)
    (run_dir,) = (out / "wandb").glob(f"offline-run-*-{wandb_id}")
    run_dir.rename(moved / "wandb" / run_dir.name)
    scalars, config = _wandb(moved)
    assert scalars["train/loss"] == pytest.approx({s: float(v) for s, v in losses.items()})
    assert scalars["train/lr"][4] == pytest.approx(rows[4]["lr"])

    logs = trackio_store(tmp_path / "trackio")["logs"]  # the newest run named toy
    assert {log["step"]: log["train/loss"] for log in logs} == pytest.approx(losses, rel=1e-6)


def test_a_tracker_added_on_resume_gets_the_steps_before(tmp_path, monkeypatch):
    """`--resume --set logging.report_to=[tensorboard,mlflow]`: the new MLflow run held only the
    steps after the checkpoint."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = LoggingConfig(report_to=[], progress=False, plot=False)
    first = MetricsLogger(tmp_path, before, total_steps=4, run_config={"seed": 1})
    for step in (1, 2, 3):  # checkpoint at step 2, killed after step 3
        first.log(_row(step, 10.0 - step))
    first.close(plot=False)

    added = LoggingConfig(report_to=["mlflow"], progress=False, plot=False)
    resumed = MetricsLogger(tmp_path, added, 4, start_step=2, run_config={"seed": 1})
    for step in (3, 4):
        resumed.log(_row(step, 10.0 - step))
    resumed.close(plot=False)
    losses, _ = _mlflow_run(tmp_path)
    assert losses == {1: 9.0, 2: 8.0, 3: 7.0, 4: 6.0}
