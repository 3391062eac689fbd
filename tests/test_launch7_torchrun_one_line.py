"""Plain ``torchrun ... -m reflectioncoder.cli train ...`` ends a failure in one line, as
``reflectioncoder launch`` does: ``torchrun: rank N failed (exit code 2 ...): reflectioncoder
train: <the rank's line>``, the rank's exit code. It printed torchrun's own Python traceback
(``raise ChildFailedError``), then its report of every rank, and exited 1; Ctrl-C and SIGTERM
printed a ``SignalException`` traceback. torch loads the package's ``torchrun.handlers`` entry
point into torchrun's process (reflectioncoder/launch_torchrun.py); torch is not patched."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

pytest.importorskip("torch.distributed.run")

from torch.distributed.elastic.multiprocessing import SignalException  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import (  # noqa: E402
    ChildFailedError,
    ProcessFailure,
)

from reflectioncoder import launch_torchrun  # noqa: E402
from reflectioncoder.testing.cli import train_argv  # noqa: E402
from reflectioncoder.testing.live_run import TORCHRUN, start_training_launch  # noqa: E402

RUN_PY = os.path.join("site-packages", "torch", "distributed", "run.py")
SAID = "reflectioncoder train: --set optim.lrr=1: optim.lrr: unknown field (did you mean optim.lr?)"


def test_torch_finds_the_entry_point_in_the_installed_package():
    """What torch's rendezvous registry loads into torchrun (setup.py's entry_points)."""
    found = {ep.name: ep.value for ep in entry_points(group="torchrun.handlers")}
    assert found.get("reflectioncoder-one-line") == (
        "reflectioncoder.launch_torchrun:rendezvous_plugin"
    )


@pytest.mark.parametrize(("argv", "ours"), [
    (["/v/bin/torchrun", "--nproc-per-node", "2", "-m", "reflectioncoder.cli", "train"], True),
    ([f"/v/lib/{RUN_PY}", "--nproc_per_node=8", "-m", "reflectioncoder.train", "--resume"], True),
    (["/v/bin/torchrun", "--no-python", "/v/bin/reflectioncoder", "train"], True),
    (["/v/bin/torchrun", "--nproc-per-node", "2", "other_trainer.py"], False),
    (["/v/bin/reflectioncoder", "launch", "--nproc_per_node", "2", "train"], False),
    (["-c"], False),
])  # fmt: skip
def test_only_a_torchrun_of_a_reflectioncoder_command_is_taken(argv, ours):
    assert launch_torchrun.launches_reflectioncoder(argv) is ours


def _child_failed(tmp_path, exitcode: int, line: str | None) -> ChildFailedError:
    error_file = tmp_path / "error.json"
    if line is not None:
        report = {"message": {"message": line, "extraInfo": {"timestamp": "1"}}}
        error_file.write_text(json.dumps(report))
    failure = ProcessFailure(local_rank=1, pid=7, exitcode=exitcode, error_file=str(error_file))
    return ChildFailedError("reflectioncoder.cli", {1: failure})


@pytest.mark.parametrize(("error", "code", "line"), [
    ("said", 2, f"torchrun: rank 1 failed (exit code 2): {SAID}"),
    ("killed", 1, "torchrun: rank 1 failed (killed by SIGKILL)"),
    ("ctrl-c", 130, "torchrun: interrupted"),
    ("sigterm", 143, "torchrun: terminated"),
])  # fmt: skip
def test_the_launch_ends_in_one_line_and_the_ranks_code(tmp_path, monkeypatch, capsys, error,
                                                         code, line):  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["torchrun", "-m", "reflectioncoder.cli", "runs", "x"])
    raised = {
        "said": lambda: _child_failed(tmp_path, 2, SAID),
        "killed": lambda: _child_failed(tmp_path, -9, None),
        "ctrl-c": lambda: SignalException("got signal: 2", sigval=signal.SIGINT),
        "sigterm": lambda: SignalException("got signal: 15", sigval=signal.SIGTERM),
    }[error]()
    assert launch_torchrun._said_in_one_line(raised) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_torchruns_own_errors_are_left_to_it(capsys):
    assert launch_torchrun._said_in_one_line(RuntimeError("rendezvous timed out")) is None
    assert capsys.readouterr().err == ""


def _torchrun(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    args = [*TORCHRUN, "--nproc_per_node", "2", *argv]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


@pytest.mark.slow  # a real 2-process torchrun: about 10 s
@pytest.mark.parametrize("module", [["reflectioncoder.cli", "train"], ["reflectioncoder.train"]])
def test_a_failed_torchrun_ends_in_one_line(tmp_path, module):
    sets = {"optim.lrr": 1, "checkpoint.out_dir": tmp_path / "run"}
    done = _torchrun(tmp_path, "-m", *module, *train_argv(sets)[1:])
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Root Cause" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("torchrun: rank ") and SAID in lines[-1], lines
    assert not any(SAID in line for line in lines[:-1]), lines  # said once, not per rank
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a real 2-process training run under torchrun, one rank SIGKILLed: ~20 s
def test_a_rank_killed_outright_is_named_in_one_line(tmp_path):
    proc, lines = start_training_launch(tmp_path, nproc=2, torchrun=True)
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    os.kill(int(ranks.stdout.split()[-1]), signal.SIGKILL)
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 1, "".join(lines)
    assert "Traceback" not in "".join(lines), "".join(lines)
    assert lines[-1].strip() == "torchrun: rank 1 failed (killed by SIGKILL; 1 other rank(s) "\
        "failed too)", "".join(lines)  # fmt: skip


@pytest.mark.slow  # a real 2-process training run under torchrun, stopped by Ctrl-C: ~20 s
def test_ctrl_c_ends_a_torchrun_in_one_line(tmp_path):
    proc, lines = start_training_launch(tmp_path, nproc=2, torchrun=True, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole process group
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 130, "".join(lines)
    assert "Traceback" not in "".join(lines), "".join(lines)
    assert lines[-1].strip() == "torchrun: interrupted", "".join(lines)


@pytest.mark.parametrize("logger", ["torch.distributed.run", "__main__"])
def test_torchruns_omp_banner_is_left_out(logger):
    """torchrun's 4-line banner setting OMP_NUM_THREADS=1 ("please further tune ...") opened
    every launch without it set: the trainer sets each rank's threads itself and logs them."""
    from reflectioncoder.launch import hide_torchruns_own_lines

    hide_torchruns_own_lines()
    banner = ("\n*****************************************\nSetting OMP_NUM_THREADS environment "
              "variable for each process to be %s in default, ...\n*****")  # fmt: skip
    said = logging.getLogger(logger)
    assert not said.filter(logging.LogRecord(logger, 30, "run.py", 1, banner, (1,), None))
    other = "node_rank is only used for static rdzv_backend"
    assert said.filter(logging.LogRecord(logger, 30, "run.py", 1, other, (), None))


@pytest.mark.parametrize(("argv", "restarts"), [
    (["torchrun", "--max-restarts", "3", "-m", "reflectioncoder.cli"], 3),
    (["torchrun", "--max_restarts=2", "-m", "reflectioncoder.cli"], 2),
    (["torchrun", "-m", "reflectioncoder.cli", "train"], 0),
])  # fmt: skip
def test_a_launch_that_restarts_keeps_torchruns_word_of_each_failure(argv, restarts):
    """With --max-restarts a rank's failure ends nothing: torchrun's "failed (exitcode ...)"
    is the one line that says why its ranks restarted, so it stays."""
    from reflectioncoder.launch import hide_torchruns_own_lines

    assert launch_torchrun._restarts(argv) == restarts
    logger = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    saved = list(logger.filters)
    try:
        logger.filters.clear()
        hide_torchruns_own_lines(keep_failures=restarts > 0)
        failed = logging.LogRecord(
            logger.name, 40, "api.py", 1, "failed (exitcode: %s)", (-9,), None
        )
        assert bool(logger.filter(failed)) is (restarts > 0)
    finally:
        logger.filters[:] = saved
