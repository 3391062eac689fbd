"""Each tracker's own environment variables win over the run's defaults, as reporters.py
promises and as HF Trainer's report_to reads them: MLFLOW_EXPERIMENT_NAME was ignored (the run
went to the experiment `logging.project`), and so was WANDB_DIR (always OUT/wandb)."""

from __future__ import annotations

import os

import pytest

from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import MetricsLogger


def test_mlflow_experiment_name_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-code-llms")
    cfg = LoggingConfig(report_to=["mlflow"], progress=False, plot=False)
    logger = MetricsLogger(tmp_path, cfg, total_steps=1, run_config={"seed": 1})
    logger.log({"step": 1, "loss": 2.0, "kl": 0.1, "samples": 2, "tokens": 9})
    logger.close(plot=False)

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    assert client.get_experiment_by_name("reflectioncoder") is None
    experiment = client.get_experiment_by_name("team-code-llms")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["train/loss"] == 2.0


@pytest.mark.slow
def test_wandb_dir_from_the_environment(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "team"))
    (tmp_path / "team").mkdir()
    out = tmp_path / "run"
    cfg = LoggingConfig(report_to=["wandb"], progress=False, plot=False)
    logger = MetricsLogger(out, cfg, total_steps=1, run_config={"seed": 1})
    logger.log({"step": 1, "loss": 2.0, "kl": 0.1, "samples": 2, "tokens": 9})
    logger.close(plot=False)
    assert list((tmp_path / "team" / "wandb").glob("offline-run-*"))
    assert not (out / "wandb").exists()
