"""More processes on a node than it has GPUs (``--nproc_per_node 8`` on a 2-GPU machine): one
line naming the rank and the GPUs seen, before any CUDA call or process group (it was CUDA's
"invalid device ordinal" from ``set_device``). The GPUs are faked: the check runs on a CPU."""

from __future__ import annotations

import torch

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv


def test_a_local_rank_past_the_gpus_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def no_cuda_call(*args, **kwargs):
        raise AssertionError("a CUDA call before the check")

    monkeypatch.setattr(torch.cuda, "set_device", no_cuda_call)
    for key, value in {
        "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "0,1"
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    data = tmp_path / "data.jsonl"
    data.write_text("")  # never read: the launch is refused first
    out = tmp_path / "run"
    sets = {"data.files": f"[{data}]", "train.device": "cuda", "checkpoint.out_dir": out}
    assert main(train_argv(sets)) == 1
    assert capsys.readouterr().err == (
        "reflectioncoder train: train.device: rank 3 is local rank 3, but this machine shows "
        "2 GPU(s) (CUDA_VISIBLE_DEVICES=0,1): launch at most that many processes per node "
        "(--nproc_per_node / --num_gpus)\n"
    )
    assert not out.exists()
