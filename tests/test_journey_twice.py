"""The same job launched twice into one run folder (a job resubmitted while it still runs):
the second stops in one line naming the process that trains there (it used to interleave its
metrics with the first's, steps [2, 1, 3, 2, ...], and clear the first's checkpoint saves)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import ctrl_c_reaches, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


def test_a_second_launch_into_a_training_folder_stops(tmp_path, capsys):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 16, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    out = tmp_path / "run"
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok"}
    sets.update({"checkpoint.out_dir": out, "logging.report_to": "[none]"})
    sets.update({"train.samples_per_step": 1, "train.epochs": 100, "logging.print_every": 1})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    first = subprocess.Popen(
        [sys.executable, "-m", "reflectioncoder.cli", *train_argv(sets)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        preexec_fn=ctrl_c_reaches,
    )  # fmt: skip
    try:
        for line in first.stderr:  # training: its run folder is written
            if line.startswith("train: "):
                break
        assert first.poll() is None, "the first run ended before the second launch"
        assert main(train_argv(sets, "--resume")) == 1
        assert capsys.readouterr().err == (
            f"reflectioncoder train: {out}: checkpoint.out_dir: pid {first.pid} on "
            f"{socket.gethostname()} is training in this folder; wait for it to end or choose "
            "another folder\n"
        )
        assert first.poll() is None  # the first run went on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == list(range(1, len(steps) + 1))
