"""The first DeepSpeed run on a CPU machine compiles DeepSpeed's collectives op
(deepspeed_shm_comm) inside ``deepspeed.init_distributed``: 2 minutes of silence on 2 busy
cores before the first line of the log (seen on 2026-12-05). The log now says so first, once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer
from reflectioncoder.train import distributed

LINE = "DeepSpeed compiles its CPU collectives op (deepspeed_shm_comm) on first use"


def test_an_unbuilt_op_is_announced_and_a_built_one_is_not(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    folder = distributed.shm_op_to_build()
    assert folder is not None and folder.startswith(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="reflectioncoder.train"):
        distributed.announce_shm_op_build()
    assert LINE in caplog.text and folder in caplog.text
    caplog.clear()
    open(os.path.join(folder, "deepspeed_shm_comm.so"), "wb").close()  # built by a run before
    assert distributed.shm_op_to_build() is None
    with caplog.at_level(logging.INFO, logger="reflectioncoder.train"):
        distributed.announce_shm_op_build()
    assert caplog.text == ""


@pytest.mark.slow  # compiles the op: 1-3 minutes
def test_a_first_zero_run_on_two_cpu_ranks_says_it_compiles(tmp_path):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 4, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok"}
    sets.update({"distributed.backend": "deepspeed", "distributed.zero_stage": 1})
    sets.update({"train.max_steps": 1, "checkpoint.out_dir": tmp_path / "run"})
    sets.update({"logging.report_to": "[none]", "train.threads": 1})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    argv = [*torchrun, "-m", "reflectioncoder.cli", *train_argv(sets)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert log.count(LINE) == 1, log
    assert log.index(LINE) < log.index("INFO done:")
