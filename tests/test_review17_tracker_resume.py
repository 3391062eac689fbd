"""A resumed run sends MLflow and trackio no step twice.

The killed run reported the steps after its last checkpoint; the resumed run trains them again
(same values). TensorBoard purges the old events (``purge_step``), but MLflow and trackio keep
every point they are sent: each such step used to be in their history twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import ARCH
from test_reporters import trackio_store

from reflectioncoder.config import LoggingConfig
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.checkpoint import latest_checkpoint, list_checkpoints, read_trainer_state
from reflectioncoder.train.metrics import MetricsLogger, read_metrics

TINY_ARCH = ARCH.split("=", 1)


def _mlflow_history(out: Path, key: str) -> list[tuple[int, float]]:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("reflectioncoder")
    (run,) = client.search_runs([experiment.experiment_id])
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def _row(step: int) -> dict:
    return {"step": step, "loss": 10.0 - step, "kl": 0.1, "samples": 2, "tokens": 9}


def _val(step: int, loss: float) -> dict:
    return {"step": step, "val_loss": loss, "val_ce": loss, "val_kl": 0.0, "val_samples": 2,
            "val_tokens": 9, "val_time": 0.1}  # fmt: skip


def test_a_resumed_logger_sends_mlflow_only_the_steps_it_lacks(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = LoggingConfig(report_to=["mlflow"], progress=False, plot=False)
    first = MetricsLogger(tmp_path, cfg, total_steps=5, run_config={"seed": 1})
    for step in (1, 2, 3, 4):  # the checkpoint is at step 2; killed after step 4's row
        first.log(_row(step))
    first.log_validation(_val(3, 1.0))
    first.close(plot=False)

    resumed = MetricsLogger(tmp_path, cfg, total_steps=5, start_step=2, run_config={"seed": 1})
    for step in (3, 4, 5):
        resumed.log(_row(step))
        if step == 5:
            resumed.log_validation(_val(5, 0.5))
    resumed.close(plot=False)

    assert _mlflow_history(tmp_path, "train/loss") == [(s, 10.0 - s) for s in (1, 2, 3, 4, 5)]
    assert _mlflow_history(tmp_path, "val/loss") == [(3, 1.0), (5, 0.5)]
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]


def _argv(tmp_path: Path, out: Path, *flags: str) -> list[str]:
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 12, seed=0)
    sets = {"model.tokenizer_vocab_size": 400, "data.files": f"[{data}]", **dict([TINY_ARCH])}
    sets.update({"checkpoint.out_dir": out, "checkpoint.save_every": 4, "train.max_steps": 12})
    sets.update({"train.samples_per_step": 2, "packing.max_tokens": 400, "logging.plot": False})
    sets.update({"logging.report_to": "[mlflow,trackio]", "logging.run_name": "toy"})
    return [sys.executable, "-m", "reflectioncoder.cli", *train_argv(sets, "--no-progress", *flags)]


@pytest.mark.slow  # a run SIGKILLed, then resumed, with two trackers: about 40 s on 2 cores
def test_a_sigkilled_run_resumed_by_the_cli_has_each_step_once_in_mlflow_and_trackio(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS="1", TRACKIO_DIR=str(tmp_path / "trackio"))
    killed = subprocess.Popen(_argv(tmp_path, out), env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        # Past the step-4 checkpoint: step 5 (and any up to 7) reached the trackers and is
        # trained again by the resume. Any moment before the step-8 checkpoint will do: a
        # window of three steps (one, waiting for step 7's row, was missed on a loaded machine
        # and the run finished unkilled).
        steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")] if out.is_dir() else []
        if [p.name for p in list_checkpoints(out)] == ["step-000004"] and len(steps) >= 5:
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert read_trainer_state(latest_checkpoint(out))["step"] == 4
    done = subprocess.run(_argv(tmp_path, out, "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}
    assert sorted(rows) == list(range(1, 13))
    history = _mlflow_history(out, "train/loss")
    assert [step for step, _ in history] == list(range(1, 13))  # each step once
    assert dict(history) == pytest.approx(rows, rel=1e-6)
    logged = [log["step"] for log in trackio_store(tmp_path / "trackio")["logs"]]
    assert sorted(logged) == list(range(1, 13))
