"""A run killed after a checkpoint and resumed with --resume is ONE run in each tracker: the
resume continues the MLflow run and the W&B run (ids recorded in OUT/tracker_runs.json) and the
trackio run of the same name, instead of starting a second run beside the killed one's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import ARCH
from test_reporters import trackio_store

from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.metrics import read_metrics


def _train(tmp_path: Path, out: Path, *flags: str) -> None:
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 8, seed=0)
    arch = dict([ARCH.split("=", 1)])
    sets = {"model.tokenizer_vocab_size": 400, "data.files": f"[{data}]", **arch}
    sets.update({"checkpoint.out_dir": out, "checkpoint.save_every": 2, "train.max_steps": 4})
    sets.update({"train.samples_per_step": 2, "packing.max_tokens": 400, "logging.plot": False})
    sets.update({"logging.report_to": "[mlflow,wandb,trackio]", "logging.run_name": "toy"})
    argv = train_argv(sets, "--no-progress", *flags)
    code = f"from reflectioncoder.cli import main\nraise SystemExit(main({argv!r}))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", TRACKIO_DIR=str(tmp_path / "trackio"))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # two real runs, three trackers each: about 40 s on a loaded 2-core machine
def test_a_resumed_run_is_one_run_in_each_tracker(tmp_path):
    out = tmp_path / "run"
    _train(tmp_path, out)
    # Killed after its step-2 checkpoint: the later checkpoint and the final model never made.
    shutil.rmtree(out / "checkpoints" / "step-000004")
    shutil.rmtree(out / "final")
    _train(tmp_path, out, "--resume")
    rows = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}
    assert sorted(rows) == [1, 2, 3, 4]

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("reflectioncoder")
    (run,) = client.search_runs([experiment.experiment_id])  # one run, not two
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(rows, rel=1e-6)
    ids = json.loads((out / "tracker_runs.json").read_text())
    assert ids["mlflow"] == run.info.run_id

    offline = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{ids['wandb']}") for name in offline)

    store = trackio_store(tmp_path / "trackio")
    assert store["runs"] == ["toy"]
    logged = {log["step"] for log in store["logs"]}
    assert {1, 2, 3, 4} <= logged
