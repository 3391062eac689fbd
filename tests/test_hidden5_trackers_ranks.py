"""Issue 23's trackers on the layout they are for: a run on 2 processes (gloo, the documented
`python -m reflectioncoder.launch`) with every tracker listed writes one run to each (only rank
0 reports), offline, holding metrics.jsonl's scalars once per step; and the MLflow commands
docs/training.md gives for reading the local store list that one run."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import ARCH
from test_reporters import _check, _mlflow, _tensorboard, _trackio, _wandb

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 2 processes and four trackers: a minute or more on the shared CPU
def test_two_ranks_report_once_to_every_tracker_offline(tmp_path):
    seed = random.randrange(10**4)
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 10, seed=seed)
    out = tmp_path / "run"
    sets = [
        ARCH, "model.tokenizer_vocab_size=400", f"data.files=[{data}]",
        f"checkpoint.out_dir={out}", "checkpoint.save_every=0", "checkpoint.save_final=false",
        "train.max_steps=3", "train.samples_per_step=4", f"train.seed={seed}",
        "distributed.backend=deepspeed", "distributed.zero_stage=1",
        "logging.report_to=[tensorboard, wandb, mlflow, trackio]", "logging.run_name=toy",
        "logging.plot=false", "logging.progress=false",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "reflectioncoder.launch", "--nproc_per_node=2", "train"]
    cmd += ["--preset", "tiny", *[a for s in sets for a in ("--set", s)]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", TRACKIO_DIR=str(tmp_path / "trackio"))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for name, (scalars, _) in [
        ("tensorboard", _tensorboard(out)),
        ("wandb", _wandb(out)),  # asserts a single offline run
        ("mlflow", _mlflow(out)),  # asserts a single run
        ("trackio", _trackio(tmp_path / "trackio")),
    ]:
        _check(name, scalars, rows)
    assert len(list((out / "tensorboard").rglob("events.out.tfevents.*"))) == 1

    # docs/training.md's commands for the MLflow store, as written there.
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    read_env = dict(env, MLFLOW_ALLOW_FILE_STORE="true", MLFLOW_TRACKING_URI=str(out / "mlruns"))
    found = subprocess.run(
        [mlflow, "experiments", "search"], env=read_env, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr[-2000:]
    (experiment_id,) = re.findall(r"^(\S+)\s+reflectioncoder\b", found.stdout, re.M)
    listed = subprocess.run(
        [mlflow, "runs", "list", "--experiment-id", experiment_id],
        env=read_env,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert len(re.findall(r"\btoy\b", listed.stdout)) == 1, listed.stdout
