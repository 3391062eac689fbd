"""logging.report_to: one real `reflectioncoder train` run reports to TensorBoard, Weights &
Biases (offline), MLflow (local file store) and trackio (local), and each tracker's own reader
gives back the run's scalars, step for step as in metrics.jsonl, and its config; a tracker
whose package is missing stops the run at start-up in one line, before the run folder exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import ARCH

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.metrics import read_metrics

SCALARS = (
    "loss",
    "ce",
    "teacher_ce",
    "student_ce",
    "kl",
    "mask_rate",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "samples_per_s",
)
LR = 3e-3


def _train(
    tmp_path: Path, out: Path, trackers: str, prelude: str = ""
) -> subprocess.CompletedProcess:
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 6, seed=0)
    overrides = [
        ARCH,
        "model.tokenizer_vocab_size=400",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=0",
        "checkpoint.save_final=false",
        "train.max_steps=3",
        "train.samples_per_step=2",
        f"optim.lr={LR}",
        "packing.max_tokens=400",
        f"logging.report_to=[{trackers}]",
        "logging.run_name=toy",
        "logging.plot=false",
        "--no-progress",
    ]
    argv = ["train", "--preset", "tiny"]
    for o in overrides:
        argv += [o] if o.startswith("--") else ["--set", o]
    code = f"{prelude}\nfrom reflectioncoder.cli import main\nraise SystemExit(main({argv!r}))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", TRACKIO_DIR=str(tmp_path / "trackio"))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )


def _check(name: str, got: dict[str, dict[int, float]], rows: list[dict]) -> None:
    for key in SCALARS:
        want = {r["step"]: r[key] for r in rows}
        assert got[f"train/{key}"].keys() == want.keys(), (name, key)
        for step, value in want.items():
            assert got[f"train/{key}"][step] == pytest.approx(value, rel=1e-6), (name, key, step)


def _tensorboard(out: Path) -> tuple[dict, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    scalars = {
        tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]
    }
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    return scalars, config


def _wandb(out: Path) -> tuple[dict, dict]:
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    wandb = Path(sys.executable).with_name("wandb")
    proc = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(runs[0])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    scalars: dict[str, dict[int, float]] = {}
    for r in records:
        if r["type"] == "history":
            step = int(r["history"]["step"]["num"])
            for key, value in r["history"]["item"].items():
                scalars.setdefault(key, {})[step] = value
    config = next(r["run"]["config"]["update"] for r in records if r["type"] == "run")
    return scalars, config


def _mlflow(out: Path) -> tuple[dict, dict]:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("reflectioncoder")
    (run,) = client.search_runs([experiment.experiment_id])
    scalars = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        for key in run.data.metrics
    }
    return scalars, run.data.params


def trackio_store(folder: Path) -> dict:
    """trackio's own reader over the store in FOLDER: project reflectioncoder's runs, and the logs
    and config of its run toy. In a fresh process, as trackio fixes its store's folder (TRACKIO_DIR)
    when first imported: in this one, a later test would read an earlier test's store."""
    code = (
        "import json\n"
        "from trackio.sqlite_storage import SQLiteStorage as S\n"
        "p, r = 'reflectioncoder', 'toy'\n"
        "store = {'runs': S.get_runs(p), 'logs': S.get_logs(p, r)}\n"
        "store['config'] = S.get_run_config(p, r)\n"
        "print(json.dumps(store, default=str))"
    )
    env = {**os.environ, "TRACKIO_DIR": str(folder)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _trackio(folder: Path) -> tuple[dict, dict]:
    store = trackio_store(folder)
    scalars: dict[str, dict[int, float]] = {}
    for log in store["logs"]:
        for key, value in log.items():
            if key.startswith("train/"):
                scalars.setdefault(key, {})[log["step"]] = value
    return scalars, store["config"]


@pytest.mark.slow  # four trackers start and write in a real run: 16 s here, more when busy
def test_every_tracker_receives_the_scalars_and_the_config(tmp_path):
    out = tmp_path / "run"
    proc = _train(tmp_path, out, "tensorboard, wandb, mlflow, trackio")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]

    scalars, config = _tensorboard(out)
    _check("tensorboard", scalars, rows)
    assert f"lr: {LR}" in config and "report_to:" in config

    scalars, config = _wandb(out)
    _check("wandb", scalars, rows)
    assert config["optim"]["lr"] == LR

    scalars, params = _mlflow(out)
    _check("mlflow", scalars, rows)
    assert float(params["optim.lr"]) == LR and params["train.max_steps"] == "3"

    scalars, config = _trackio(tmp_path / "trackio")
    _check("trackio", scalars, rows)
    assert config["optim.lr"] == LR


def test_a_missing_tracker_stops_the_run_at_start_up_in_one_line(tmp_path):
    out = tmp_path / "run"
    hide = (
        "import importlib.util as u\n"
        "find = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'mlflow' else find(name, *a)"
    )
    proc = _train(tmp_path, out, "tensorboard, mlflow", prelude=hide)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "reflectioncoder train: logging.report_to: mlflow is not installed: pip install "
        "'reflectioncoder[mlflow]' (or remove mlflow from the list)"
    ], proc.stderr
    assert not out.exists()  # nothing was written
