"""``python -m reflectioncoder.launch`` stopped by a signal ends as every command does: SIGTERM
(scancel, a job's time limit, docker stop) prints ``reflectioncoder launch: terminated`` and
exits 143, Ctrl-C ``interrupted`` and 130. torchrun's agent turns the signal into its own
``SignalException``, which the error boundary took for a bug: ``SignalException: Process N got
signal: 15 (an internal error: rerun with --debug ...)``, exit 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("torch.distributed.run")

from torch.distributed.elastic.multiprocessing import SignalException  # noqa: E402

from reflectioncoder import launch  # noqa: E402
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl  # noqa: E402


@pytest.mark.parametrize(("sig", "code", "word"), [
    (signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])  # fmt: skip
def test_a_signal_to_the_agent_is_its_exit_status(monkeypatch, capsys, sig, code, word):
    def agent_signalled(args):
        raise SignalException(f"Process {os.getpid()} got signal: {sig}", sigval=sig)

    monkeypatch.setattr("torch.distributed.run.run", agent_signalled)
    assert launch.main(["--nproc_per_node", "1", "train", "--preset", "tiny"]) == code
    assert capsys.readouterr().err.splitlines() == [f"reflectioncoder launch: {word}"]


@pytest.mark.slow  # a real launch of a training run, stopped in its steps: about 20 s
def test_sigterm_stops_a_real_launch_with_143(tmp_path):
    write_toy_jsonl(tmp_path / "toy.jsonl", 2000, seed=0)
    sets = {"data.files": f"[{tmp_path / 'toy.jsonl'}]", "model.tokenizer_vocab_size": 400,
            "train.max_steps": 1000, "logging.report_to": "[none]",
            "checkpoint.out_dir": tmp_path / "run"}  # fmt: skip
    argv = [sys.executable, "-m", "reflectioncoder.launch", "--nproc_per_node", "1", "train",
            "--preset", "tiny", "--no-progress"]  # fmt: skip
    argv += [word for key, value in sets.items() for word in ("--set", f"{key}={value}")]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    lines = []
    for line in proc.stderr:  # the ranks are training once the step plan is said
        lines.append(line)
        if "optimizer steps" in line:
            break
    proc.send_signal(signal.SIGTERM)
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 143, "".join(lines)
    assert lines[-1].strip() == "reflectioncoder launch: terminated", "".join(lines)
    assert not any("internal error" in line for line in lines), "".join(lines)


def test_an_option_whose_value_is_a_command_name_is_torchruns(tmp_path):
    """``--rdzv-id train`` (a job named after what it does) is torchrun's option and its value:
    the command is the first word torchrun's parser leaves (it took ``train`` for it)."""
    argv = [sys.executable, "-m", "reflectioncoder.launch", "--rdzv-id", "train",
            "--nproc_per_node", "1", "runs", str(tmp_path)]  # fmt: skip
    # an empty folder: runs says so, exit 2 (what matters is that runs was launched)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "usage:" not in done.stderr, done.stderr[-3000:]
    assert lines[-1].startswith("reflectioncoder launch: rank 0 failed (exit code 2): "
                                "reflectioncoder runs: "), lines[-1]  # fmt: skip
