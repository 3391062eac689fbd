"""The training progress a person watches: a resumed run's bar counts from its checkpoint's
step, a log file's lines say how long is left (at this process's rate, so a resume's ETA is not
stretched by the steps the killed run did), and MFU shows where the row has it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import reflectioncoder.progress as progress
from reflectioncoder.config import LoggingConfig
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer
from reflectioncoder.train.metrics import MetricsLogger, progress_text

ROW = {"loss": 1.0, "kl": 0.1, "mask_rate": 0.7, "lr": 1e-5, "tokens_per_s": 100.0}
ROW.update({"samples": 2, "tokens": 100, "time": 1.0})


def test_a_resumed_runs_terminal_bar_counts_from_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    monkeypatch.setattr(progress, "_enabled", True)
    cfg = LoggingConfig(report_to=["none"], plot=False)
    metrics = MetricsLogger(tmp_path, cfg, total_steps=10, start_step=6)
    metrics.log({**ROW, "step": 7})
    bar = metrics._bar._bar  # tqdm's own count: it drew 1/10 here before
    assert (bar.n, bar.initial, bar.total) == (7, 6, 10)
    metrics.close(plot=False)


def test_plain_lines_give_the_time_left_at_this_processs_rate(monkeypatch, capsys):
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    monkeypatch.setattr(progress, "_enabled", True)
    clock = iter([100.0, 104.0, 108.0, 112.0, 116.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.Progress(10, "train", unit="step", every=1, initial=6)  # resumed at step 6
    for _ in range(4):
        bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "train: 7/10 steps  (4 s, 12 s left)",  # 4 s a step here, 3 steps to go
        "train: 8/10 steps  (8 s, 8 s left)",
        "train: 9/10 steps  (12 s, 4 s left)",
        "train: 10/10 steps  (16 s)",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"), [(42.4, "42 s"), (450, "7.5 min"), (3 * 3600 + 720, "3.2 h")]
)
def test_durations_read_at_a_glance(seconds, text):
    assert progress.duration(seconds) == text


def test_the_progress_line_shows_mfu_where_the_row_has_it():
    assert "MFU" not in progress_text(ROW)  # a CPU row without logging.peak_tflops
    assert progress_text({**ROW, "mfu": 0.4512}).endswith("100 tok/s  MFU 45.1%")


@pytest.mark.slow
def test_a_log_files_train_lines_say_how_long_is_left(tmp_path):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 4, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok"}
    sets.update({"checkpoint.out_dir": tmp_path / "run", "train.max_steps": 3})
    sets.update({"train.samples_per_step": 1})
    sets.update({"logging.report_to": "[none]", "logging.print_every": 1})
    argv = [sys.executable, "-m", "reflectioncoder.cli", *train_argv(sets)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = re.findall(r"^train: (\d)/3 steps .* tok/s  \((\d+ s)(, \d+ s left)?\)$",
                       done.stderr, re.M)  # fmt: skip
    assert [(n, bool(left)) for n, _, left in lines] == [("1", True), ("2", True), ("3", False)]
