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
from reflectioncoder.testing.live_run import start_training_launch  # noqa: E402


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
    proc, lines = start_training_launch(tmp_path)
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
