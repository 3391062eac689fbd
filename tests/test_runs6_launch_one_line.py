"""A failed launch ends in one line, and a killed one leaves no MLflow run RUNNING.

- ``python -m reflectioncoder.launch``: rank 0 printed its error line, then the launcher printed
  it again inside its own (``rank 0 failed (exit code 2 ...): <the same line>``), with torchrun's
  ``Sending process N closing signal SIGTERM`` between: three lines for one mistake. The ranks
  now leave the line to the launcher (written where it reads it, ``$TORCHELASTIC_ERROR_FILE``).
- "already holds a run" (a fresh launch into a run's folder, the same on every rank) was printed
  by every rank under torchrun: it is said once a node, by local rank 0, as a bad value is.
- A rank 0 killed outright (the OOM killer) left its MLflow run RUNNING until the next launch
  of the folder marked it KILLED: the launcher marks it once the ranks have ended, unless
  another launch holds the folder; a ``--resume`` still continues that run.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.run")

from torch.distributed.elastic.multiprocessing.errors import (  # noqa: E402
    ChildFailedError,
    ProcessFailure,
)

from reflectioncoder import launch  # noqa: E402
from reflectioncoder.cli import OUR_LAUNCHER_ENV, guarded, main  # noqa: E402
from reflectioncoder.testing.cli import train_argv  # noqa: E402
from reflectioncoder.testing.live_run import start_training_launch  # noqa: E402
from reflectioncoder.train.run_folder import RunFolderError  # noqa: E402

BAD_VALUE = ["train", "--preset", "tiny", "--set", "optim.lrr=1"]
SAID = "optim.lrr: unknown field (did you mean optim.lr?)"


def test_under_our_launcher_a_rank_leaves_its_line_to_it(tmp_path, capsys, monkeypatch):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv(OUR_LAUNCHER_ENV, "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    assert main(BAD_VALUE) == 2
    assert capsys.readouterr().err == ""
    assert SAID in json.loads(error_file.read_text())["message"]["message"]


def test_a_line_the_launcher_cannot_be_told_is_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(OUR_LAUNCHER_ENV, "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "no-such-folder" / "e.json"))
    assert main(BAD_VALUE) == 2
    assert SAID in capsys.readouterr().err


@pytest.mark.parametrize(("local_rank", "printed"), [("0", 1), ("1", 0)])
def test_a_folder_holding_a_run_is_said_once_a_node(capsys, monkeypatch, local_rank, printed):
    """Under plain torchrun (no OUR_LAUNCHER_ENV): local rank 0 says it, the others exit 1."""
    monkeypatch.delenv(OUR_LAUNCHER_ENV, raising=False)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", local_rank)

    def refused() -> int:
        raise RunFolderError("run already holds a run (metrics.jsonl)", field="checkpoint.out_dir")

    assert guarded("reflectioncoder train", refused) == 1
    assert len(capsys.readouterr().err.splitlines()) == printed


def _failure(tmp_path: Path, rank: int, exitcode: int, line: str | None, at: int):
    error_file = tmp_path / f"error-{rank}.json"
    if line is not None:
        report = {"message": {"message": line, "extraInfo": {"timestamp": str(at)}}}
        error_file.write_text(json.dumps(report))
    return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode,
                          error_file=str(error_file))  # fmt: skip


def test_the_line_names_the_rank_that_failed_not_one_ended_after(tmp_path):
    """The agent ends the other ranks (SIGTERM: 143, no line) and a rank in a collective says
    another failed: the rank with its own line, or killed by a signal, is the one named."""
    gone = "reflectioncoder train: stopped: another rank failed (its line is above, ...)"
    failures = {0: _failure(tmp_path, 0, 143, None, 1), 1: _failure(tmp_path, 1, 1, gone, 2),
                2: _failure(tmp_path, 2, 1, f"reflectioncoder train: data.jsonl:4: {SAID}", 3),
                3: _failure(tmp_path, 3, -9, None, 4)}  # fmt: skip
    rank, failure = launch.root_failure(ChildFailedError("reflectioncoder.cli", failures))
    assert launch.failure_line(rank, failure, 4) == (
        f"rank 2 failed (exit code 1; 3 other rank(s) failed too): reflectioncoder train: "
        f"data.jsonl:4: {SAID}"
    )
    del failures[2]
    rank, failure = launch.root_failure(ChildFailedError("reflectioncoder.cli", failures))
    assert launch.failure_line(rank, failure, 3) == (
        "rank 3 failed (killed by SIGKILL; 2 other rank(s) failed too)"
    )


def test_a_rank_killed_outright_is_named_not_the_one_that_said_it_was_gone(tmp_path):
    """kill -9 of rank 1 under torchrun: rank 0, in a collective with it, wrote that another
    rank failed and the agent's SIGTERM then took it (-15), its line stamped first; the
    launch said `rank 0 failed (killed by SIGTERM ...)`, naming the wrong rank."""
    gone = "reflectioncoder train: stopped: another rank failed (its line is above, ...)"
    failures = {0: _failure(tmp_path, 0, -15, gone, 1), 1: _failure(tmp_path, 1, -9, None, 2),
                2: _failure(tmp_path, 2, -15, None, 0)}  # fmt: skip
    rank, failure = launch.root_failure(ChildFailedError("reflectioncoder.cli", failures))
    assert launch.failure_line(rank, failure, 3) == (
        "rank 1 failed (killed by SIGKILL; 2 other rank(s) failed too)"
    )


# -- MLflow: a run left RUNNING by a killed rank 0 ----------------------------------------------


def _mlflow_run(out: Path, monkeypatch) -> tuple[object, str]:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from reflectioncoder.train.tracker_names import mlflow_client

    client = mlflow_client(out)
    experiment = client.create_experiment("toy")
    run_id = client.create_run(experiment, run_name="toy").info.run_id  # RUNNING
    (out / "tracker_runs.json").write_text(json.dumps({"run_name": "toy", "mlflow": run_id}))
    (out / ".lock").write_text("pid 1 on host\n")
    return client, run_id


def test_the_launcher_marks_a_run_left_running_killed(tmp_path, monkeypatch):
    from reflectioncoder.train.tracker_names import end_killed_launch

    client, run_id = _mlflow_run(tmp_path, monkeypatch)
    argv = train_argv({"checkpoint.out_dir": tmp_path})[1:]
    assert launch.end_tracker_runs("train", argv) == (
        f"; its MLflow run {run_id}, left RUNNING, marked KILLED"
    )
    assert client.get_run(run_id).info.status == "KILLED"
    assert end_killed_launch(tmp_path) is None  # ended: nothing more to say


def test_a_run_another_launch_trains_is_left_running(tmp_path, monkeypatch):
    """A second launch refused in the folder (its lock held) must not end the first's run."""
    from reflectioncoder.train.tracker_names import end_killed_launch

    client, run_id = _mlflow_run(tmp_path, monkeypatch)
    with (tmp_path / ".lock").open("a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert end_killed_launch(tmp_path) is None
    assert client.get_run(run_id).info.status == "RUNNING"


# -- real launches ---------------------------------------------------------------------------


def _not_logs(text: str) -> list[str]:
    """stderr's lines but the trainer's log lines (``2026-12-06 04:57:25,632 INFO ...``)."""
    return [line for line in text.splitlines() if line.strip() and not line[:4].isdigit()]


@pytest.mark.slow  # a real 2-process launch: about 10 s
def test_a_launch_into_a_run_folder_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    argv = [*launch_argv(2), *train_argv({"checkpoint.out_dir": out})]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 1
    assert _not_logs(done.stderr) == [
        f"reflectioncoder launch: rank {r} failed (exit code 1; 1 other rank(s) failed too): "
        f"reflectioncoder train: checkpoint.out_dir: {out} already holds a run (metrics.jsonl); "
        "pass --resume to continue it or --overwrite to start over (deletes it)"
        for r in (0, 1)
        if f"rank {r} failed" in done.stderr
    ], done.stderr


@pytest.mark.slow  # a real 2-process torchrun: about 10 s
def test_plain_torchrun_says_a_folder_holding_a_run_once(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
            "reflectioncoder.cli", *train_argv({"checkpoint.out_dir": out})]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    # torchrun's one line carries the rank's (launch_torchrun.py): `torchrun: rank N failed
    # (...): reflectioncoder train: ... already holds a run ...`, said once, not per rank
    said = [line for line in done.stderr.splitlines() if "already holds a run" in line]
    assert len(said) == 1, done.stderr
    assert said[0].startswith("torchrun: rank "), done.stderr
    assert f"reflectioncoder train: checkpoint.out_dir: {out} already holds a run" in said[0]
    assert done.returncode == 1, done.stderr


def launch_argv(nproc: int) -> list[str]:
    return [sys.executable, "-m", "reflectioncoder.launch", "--nproc_per_node", str(nproc)]


def _rank_0(launcher: int) -> int:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent == launcher and b"RANK=0" in environ:
            return int(stat.parent.name)
    raise AssertionError("no rank 0 under the launcher")


@pytest.mark.slow  # a real 2-process launch, rank 0 killed, then resumed: about 60 s
def test_a_killed_rank_0_leaves_no_mlflow_run_running(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from reflectioncoder.train.tracker_names import mlflow_client

    sets = {"logging.report_to": "[mlflow]", "checkpoint.save_every": 1}
    proc, lines = start_training_launch(tmp_path, nproc=2, more_sets=sets)
    while not (tmp_path / "run" / "checkpoints" / "step-000002").is_dir():  # one to resume
        assert proc.poll() is None, "".join(lines) + proc.stderr.read()
        time.sleep(0.2)
    os.kill(_rank_0(proc.pid), signal.SIGKILL)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, "".join(lines) + rest
    run_id = json.loads((tmp_path / "run" / "tracker_runs.json").read_text())["mlflow"]
    assert _not_logs(rest) == [
        "reflectioncoder launch: rank 0 failed (killed by SIGKILL; 1 other rank(s) failed too); "
        f"its MLflow run {run_id}, left RUNNING, marked KILLED"
    ], rest
    client = mlflow_client(tmp_path / "run")
    assert client.get_run(run_id).info.status == "KILLED"
    # --resume continues that run: RUNNING again while it trains, KILLED by the SIGTERM below
    proc, lines = start_training_launch(tmp_path, nproc=1, more_sets=sets, flags=("--resume",))
    assert client.get_run(run_id).info.status == "RUNNING", "".join(lines)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert client.get_run(run_id).info.status == "KILLED"
    assert json.loads((tmp_path / "run" / "tracker_runs.json").read_text())["mlflow"] == run_id


# -- `reflectioncoder launch`: the same launcher as a command -------------------------------------


def test_reflectioncoder_launch_is_the_launcher(capsys):
    assert main(["launch", "--nproc_per_node", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "reflectioncoder launch: name the command to launch after torchrun's options, e.g. "
        "python -m reflectioncoder.launch --nproc_per_node 8 train --config configs/paper.yaml"
    ]
    assert main(["--help"]) == 0
    assert "launch       torchrun for a command" in capsys.readouterr().out


@pytest.mark.slow  # a real 2-process launch: about 10 s
def test_reflectioncoder_launch_ends_a_bad_value_in_one_line(tmp_path):
    command = Path(sys.executable).with_name("reflectioncoder")
    argv = [str(command), "launch", "--nproc_per_node", "2", *BAD_VALUE]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = _not_logs(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("reflectioncoder launch: rank "), lines
    assert SAID in lines[0]


def test_a_rank_ended_after_its_error_is_not_said_killed(tmp_path):
    """Rank 0 wrote its line, then the agent's SIGTERM took it before it exited (a loaded
    machine): the launch said `killed by SIGTERM`, as if the signal were the failure."""
    line = f"reflectioncoder train: data.jsonl:4: {SAID}"
    failures = {0: _failure(tmp_path, 0, -15, line, 1), 1: _failure(tmp_path, 1, -15, None, 2)}
    rank, failure = launch.root_failure(ChildFailedError("reflectioncoder.cli", failures))
    assert launch.failure_line(rank, failure, 2) == (
        f"rank 0 failed (ended by SIGTERM after its error; 1 other rank(s) failed too): {line}"
    )
