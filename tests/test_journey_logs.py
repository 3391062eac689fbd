"""A CPU run's log, as a person reads it in a file: DeepSpeed's "Setting accelerator to CPU"
warning (imported by transformers' save_pretrained at the first checkpoint) no longer lands
between the progress lines."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


@pytest.mark.slow
def test_a_cpu_run_logs_no_accelerator_warning(tmp_path):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 4, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    sets = {
        "data.files": f"[{data}]",
        "model.tokenizer": tmp_path / "tok",
        "checkpoint.out_dir": tmp_path / "run",
        "train.max_steps": 2,
        "checkpoint.save_every": 1,
        "logging.report_to": "[none]",
    }
    argv = [sys.executable, "-m", "reflectioncoder.cli", *train_argv(sets)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "train: 2/2 steps" in log  # the plain progress lines of a log file
    assert (tmp_path / "run" / "checkpoints" / "step-000001" / "COMPLETE").is_file()
    assert "accelerator" not in log.lower(), log


@pytest.mark.slow
def test_two_ranks_report_the_dropped_samples_once(tmp_path):
    """torchrun's ranks each load the data; only rank 0 reports what was dropped."""
    data = write_toy_jsonl(tmp_path / "data.jsonl", 8, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok"}
    sets.update({"data.max_len": 200, "distributed.backend": "none", "train.max_steps": 1})
    sets.update({"checkpoint.out_dir": tmp_path / "run", "logging.report_to": "[none]"})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    argv = [*torchrun, "-m", "reflectioncoder.cli", *train_argv(sets)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "over-length > max_len 200 dropped" in log
    assert log.count("WARNING data: ") == 1, log
