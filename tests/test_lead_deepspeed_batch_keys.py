"""A DeepSpeed JSON's own batch sizes are not used (the trainer packs each step itself and
DeepSpeed sees micro-batch 1, one accumulation step): a number given for one of them is named in
one start-up warning instead of being replaced silently; "auto" and the values DeepSpeed is
given anyway are not named."""

from __future__ import annotations

import json

import torch

from reflectioncoder.config_loader import load_config
from reflectioncoder.train.deepspeed_config import deepspeed_config, overridden_batch_keys
from reflectioncoder.train.distributed import DistInfo

INFO = DistInfo(rank=0, world_size=4, local_rank=0, device=torch.device("cpu"), deepspeed=True)


def _run(tmp_path, **batch):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **batch}))
    overrides = ["distributed.backend=deepspeed", f"distributed.deepspeed_config={path}"]
    return load_config(base="tiny", overrides=overrides)


def test_numbers_the_trainer_does_not_use_are_named(tmp_path):
    run = _run(tmp_path, gradient_accumulation_steps=8, train_micro_batch_size_per_gpu=4,
               train_batch_size=128)  # fmt: skip
    assert overridden_batch_keys(run, INFO) == [
        "train_micro_batch_size_per_gpu=4", "gradient_accumulation_steps=8", "train_batch_size=128"
    ]  # fmt: skip
    filled = deepspeed_config(run, INFO, hidden_size=64)  # DeepSpeed still sees ours
    assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"],
            filled["train_batch_size"]) == (1, 1, 4)  # fmt: skip


def test_auto_and_the_values_deepspeed_gets_anyway_are_not(tmp_path):
    run = _run(tmp_path, gradient_accumulation_steps="auto", train_micro_batch_size_per_gpu=1,
               train_batch_size=4)  # fmt: skip
    assert overridden_batch_keys(run, INFO) == []
    assert overridden_batch_keys(load_config(base="tiny"), INFO) == []  # no JSON at all


def test_the_batch_keys_have_one_home(tmp_path, monkeypatch):
    """One table says which batch keys the trainer owns and what DeepSpeed is given for each:
    the filled config and the start-up warning both follow it."""
    from reflectioncoder.train import deepspeed_config as ds

    assert ds.OWNED_BATCH_KEYS == tuple(ds.BATCH_FROM_WORLD)
    monkeypatch.setitem(ds.BATCH_FROM_WORLD, "train_batch_size", lambda world: 2 * world)
    run = _run(tmp_path, train_batch_size=8)
    assert deepspeed_config(run, INFO, hidden_size=64)["train_batch_size"] == 8
    assert overridden_batch_keys(run, INFO) == []
    run = _run(tmp_path, train_batch_size=16)
    assert overridden_batch_keys(run, INFO) == ["train_batch_size=16"]
