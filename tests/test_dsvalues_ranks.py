"""Under a launcher (torchrun, ``deepspeed``) a config error is one line from rank 0, where every
rank printed it: the other ranks exit with the same code (2) quietly. Errors that may be a rank's
own (a file its node cannot read: exit 1, internal errors) are still printed by each rank."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_distributed import _free_port

from reflectioncoder.cli import main
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


def _bad_json_argv(tmp_path) -> tuple[list[str], str]:
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"prescale_gradients": "auto"}, indent=2))
    data = write_toy_jsonl(tmp_path / "d.jsonl", 4)
    argv = ["train", "--preset", "tiny", "--set", f"data.files=[{data}]",
            "--set", f"checkpoint.out_dir={tmp_path / 'run'}",
            "--set", "distributed.backend=deepspeed",
            "--set", f"distributed.deepspeed_config={ds}"]  # fmt: skip
    return argv, f"{ds}:2:3: prescale_gradients: 'auto' is not filled for this key"


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_a_config_error_is_said_by_local_rank_0_only(tmp_path, capsys, monkeypatch, local_rank):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    argv, expected = _bad_json_argv(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if local_rank == "0":
        assert len(err) == 1 and err[0].startswith(f"reflectioncoder train: {expected}"), err
    else:
        assert err == []


def test_a_rank_s_own_error_is_still_said_by_that_rank(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    argv = ["train", "--preset", "tiny", "--set", f"data.files=[{tmp_path / 'missing.jsonl'}]",
            "--set", f"checkpoint.out_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.jsonl" in err[0], err


@pytest.mark.slow
def test_torchrun_with_two_ranks_prints_the_config_error_once(tmp_path):
    argv, expected = _bad_json_argv(tmp_path)
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={_free_port()}", "-m", "reflectioncoder.cli", *argv]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    ours = [line for line in lines if "reflectioncoder train:" in line]
    assert len(ours) == 1 and expected in ours[0], done.stderr[-3000:]
    # torchrun ends with it, said for the rank (reflectioncoder/launch_torchrun.py), no report
    assert ours[0] == lines[-1] and lines[-1].startswith("torchrun: rank "), lines
    assert "Traceback" not in done.stderr and "Root Cause" not in done.stderr
