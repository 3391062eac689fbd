"""Weight decay under DeepSpeed ZeRO-3 with a model loaded from disk (what users fine-tune).

Such a model is loaded straight into ZeRO-3 partitions, so each parameter the engine sees is an
empty 1-D tensor (its shape in ``ds_shape``). AdamW's groups used to be split by ``p.ndim``:
every matrix landed in the no-decay group and ``optim.weight_decay`` was silently 0 (final
weights 1.5e-3 off the one-process run's after 2 steps of this test's recipe, 1e-5 since)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_gradient_checkpointing import save_tiny_model
from test_zero3_one_process import _train

from reflectioncoder.config import OptimConfig
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.engine import make_adamw


def test_a_partitioned_matrix_is_decayed_and_a_partitioned_norm_is_not():
    matrix, norm = torch.nn.Parameter(torch.zeros(0)), torch.nn.Parameter(torch.zeros(0))
    matrix.ds_shape, norm.ds_shape = torch.Size([8, 4]), torch.Size([4])  # ZeRO-3's, emptied
    optimizer = make_adamw([matrix, norm], OptimConfig(weight_decay=0.1))
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays == {id(matrix): 0.1, id(norm): 0.0}


DECAY = ["optim.lr=1e-2", "optim.weight_decay=1.0", "checkpoint.save_final=true"]  # 1% a step


@pytest.mark.slow  # two CLI runs, DeepSpeed's start-up: about 40 s on the shared 2 cores
def test_zero3_from_disk_decays_as_one_process(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 12, seed=seed, generation_fraction=0.0)
    save_tiny_model(tmp_path / "model", data.read_text().splitlines(), seed, num_layers=2)
    _train(tmp_path, "plain", data, DECAY + ["distributed.backend=none"])
    zero3 = ["distributed.backend=deepspeed", "distributed.zero_stage=3"]
    _train(tmp_path, "zero3", data, DECAY + zero3)
    plain, zero3 = (
        load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("plain", "zero3")
    )
    assert plain.keys() == zero3.keys()
    for key, value in plain.items():
        torch.testing.assert_close(zero3[key], value, rtol=0, atol=1e-4, msg=key)
