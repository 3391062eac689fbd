"""Ctrl-C on a 2-rank launch (the terminal sends SIGINT to the launcher and every rank) printed
`reflectioncoder train: interrupted` once per rank: 8 identical lines on an 8-GPU node. Local
rank 0 says it for the node, as it already did for SIGTERM's `terminated`; each rank still
exits 130. Under reflectioncoder.launch the launch says it once, for every node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from reflectioncoder.cli import guarded
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


def _ctrl_c() -> int:
    raise KeyboardInterrupt


@pytest.mark.parametrize(("local_rank", "said"), [("0", "prog: interrupted\n"), ("1", "")])
def test_only_local_rank_0_says_interrupted(monkeypatch, capsys, local_rank, said):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert guarded("prog", _ctrl_c) == 130
    assert capsys.readouterr().err == said


@pytest.mark.slow  # a real 2-process launch, interrupted mid-run
def test_ctrl_c_on_a_two_rank_launch_says_interrupted_once(tmp_path):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 8, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    out = tmp_path / "run"
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok"}
    # train.max_steps stops a run, it does not extend one: 8 samples were 4 steps, over before
    # the Ctrl-C came (then a rank's abort in its exit: "terminate called ...")
    sets.update({"distributed.backend": "none", "train.epochs": 5000, "train.threads": 1})
    sets.update({"checkpoint.out_dir": out, "logging.report_to": "[none]"})
    launch = [sys.executable, "-m", "reflectioncoder.launch", "--nproc_per_node", "2"]
    argv = [*launch, *train_argv(sets)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = run.communicate(timeout=120)
    # the ranks leave it to reflectioncoder.launch (runs6): said once for the launch
    assert err.count("interrupted") == 1, err
    assert err.strip().splitlines()[-1] == "reflectioncoder launch: interrupted", err
    assert run.returncode == 130, err
