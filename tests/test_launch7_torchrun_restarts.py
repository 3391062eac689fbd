"""torchrun's --max-restarts with --resume in the command: a rank killed mid-run and the ranks
restart, resume from the newest checkpoint and finish the run. Every restart failed: torchrun's
default rendezvous keeps one store for all attempts, gloo's (and NCCL's) keys have the same
names in each, and a rank that reached init_process_group after the other read the killed
attempt's addresses (``Gloo connectFullMesh failed ... Connection refused``)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess

import pytest

dist = pytest.importorskip("torch.distributed")

from test_distributed import _free_port  # noqa: E402

from reflectioncoder.testing.cli import train_argv  # noqa: E402
from reflectioncoder.testing.live_run import TORCHRUN, long_run_sets  # noqa: E402
from reflectioncoder.train.checkpoint import list_checkpoints  # noqa: E402
from reflectioncoder.train.distributed import restart_store  # noqa: E402


def test_each_restart_has_keys_of_its_own(monkeypatch):
    port = _free_port()
    server = dist.TCPStore("127.0.0.1", port, 1, is_master=True, wait_for_workers=False)
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }  # as torchrun sets them
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    timeout = datetime.timedelta(seconds=30)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert restart_store(timeout) is None  # the first attempt: torch's own store as it is
    server.set("rank_0", "the killed attempt's address")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    store = restart_store(timeout)
    assert not store.check(["rank_0"])  # the killed attempt's key is not this one's
    store.set("rank_0", "this attempt's address")
    assert server.get("reflectioncoder/attempt-2/rank_0") == b"this attempt's address"


@pytest.mark.slow  # a real 2-rank torchrun, a rank killed, the ranks restarted: about 60 s
def test_torchrun_restarts_resume_the_run(tmp_path):
    out = tmp_path / "run"
    sets = {**long_run_sets(tmp_path), "train.max_steps": 30, "checkpoint.save_every": 2}
    argv = [*TORCHRUN, "--nproc_per_node", "2", "--max-restarts", "1", "-m",
            "reflectioncoder.cli", *train_argv(sets, "--no-progress", "--resume")]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    lines = []
    while not list_checkpoints(out) and proc.poll() is None:
        lines.append(proc.stderr.readline())
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    os.kill(int(ranks.stdout.split()[-1]), signal.SIGKILL)
    lines += proc.stderr.readlines()
    said = "".join(lines)
    assert proc.wait(timeout=300) == 0, said
    assert "connectFullMesh" not in said and "failed (exitcode: -9)" in said, said
    assert "resumed from" in said, said
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == list(range(1, 31)), steps


def test_a_restart_never_overwrites_what_the_launch_trained(tmp_path, monkeypatch, capsys):
    """torchrun --max-restarts ... --overwrite: its restart deleted the run its first attempt
    had trained (500 steps, say) and started over; now it is refused, the run untouched."""
    from reflectioncoder.cli import main

    run = tmp_path / "run"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert main(train_argv({"checkpoint.out_dir": run}, "--overwrite")) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(
        "reflectioncoder train: --overwrite: this is torchrun's restart 1 of the launch"
    ), said
    assert (run / "checkpoints" / "step-000002").is_dir() and (run / "metrics.jsonl").is_file()


def test_a_restart_refused_for_the_launchs_own_run_says_put_resume_in(tmp_path, monkeypatch):
    """A restart of a command without --resume was told `pass --resume to continue it or
    --overwrite to start over (deletes it)`: --overwrite there deletes what the launch trained."""
    from reflectioncoder.train.run_folder import RunFolderError, check_run_folder

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    with pytest.raises(RunFolderError, match="this is torchrun's restart 2 of the launch") as err:
        check_run_folder(tmp_path, resume=False, overwrite=False)
    assert "--overwrite" not in str(err.value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(RunFolderError, match="pass --resume to continue it or --overwrite"):
        check_run_folder(tmp_path, resume=False, overwrite=False)
