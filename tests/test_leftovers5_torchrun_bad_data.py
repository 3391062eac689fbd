"""A bad data line under plain ``torchrun`` is one line naming file, line and field. Rank 0 reads
the data; when it stopped on the line, the other ranks, waiting in a collective, failed with
gloo's ``Connection closed by peer ... GLHF!`` and printed it as "an internal error", a second
error line that blamed reflectioncoder, and it was the one torchrun's report listed for them.
Such a rank now stays quiet (a node's local rank 0 says "stopped: another rank failed")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_distributed import _free_port

from reflectioncoder.cli import _one_line_error

GLOO = (
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
    "[127.0.0.1]:17325. This is typically caused by a remote worker crashing. GLHF!"
)


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_a_rank_whose_peer_failed_does_not_call_it_an_internal_error(
    tmp_path, capsys, monkeypatch, local_rank
):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    assert _one_line_error("reflectioncoder train", RuntimeError(GLOO), debug=False) == 1
    said = "reflectioncoder train: stopped: another rank failed (its line is above, or in its "
    said += "node's output)"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ([said] if local_rank == "0" else [])
    reported = json.loads((tmp_path / "error.json").read_text())["message"]["message"]
    assert reported == said  # torchrun's report for this rank


def test_outside_a_launcher_the_same_error_is_shown_as_it_is(capsys, monkeypatch):
    for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert _one_line_error("reflectioncoder train", RuntimeError(GLOO), debug=False) == 1
    assert "Connection closed by peer" in capsys.readouterr().err


@pytest.mark.slow  # a real 2-process torchrun: about 30 s on a loaded 2-core machine
def test_plain_torchrun_says_a_bad_data_line_once(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": 5}]}\n')
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={_free_port()}", "-m", "reflectioncoder.cli", "train",
            "--preset", "tiny", "--no-progress", "--set", f"data.files=[{data}]",
            "--set", f"checkpoint.out_dir={tmp_path / 'run'}"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if "reflectioncoder train:" in line]
    # torchrun's last line, said for rank 0 (reflectioncoder/launch_torchrun.py)
    # exit code 1, or, on a loaded machine, ended by the agent's SIGTERM once it had said it
    assert len(ours) == 1 and ours[0].startswith(
        ("torchrun: rank 0 failed (exit code 1", "torchrun: rank 0 failed (ended by SIGTERM")
    ), done.stderr[-3000:]
    assert f"): reflectioncoder train: {data}:1:type: " in ours[0], ours
    assert "internal error" not in done.stderr and "GLHF" not in done.stderr
