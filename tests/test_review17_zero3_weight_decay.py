"""Weight decay under DeepSpeed ZeRO-3 with a model loaded from disk (what users fine-tune).

Such a model is loaded straight into ZeRO-3 partitions, so each parameter the engine sees is an
empty 1-D tensor (its shape in ``ds_shape``). AdamW's groups used to be split by ``p.ndim``:
every matrix landed in the no-decay group and ``optim.weight_decay`` was silently 0 (final
weights 1.5e-3 off the one-process run's after 2 steps here, against 1e-5 now)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_gradient_checkpointing import save_tiny_model

from reflectioncoder.config import OptimConfig
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.engine import _adamw

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_a_partitioned_matrix_is_decayed_and_a_partitioned_norm_is_not():
    matrix, norm = torch.nn.Parameter(torch.zeros(0)), torch.nn.Parameter(torch.zeros(0))
    matrix.ds_shape, norm.ds_shape = torch.Size([8, 4]), torch.Size([4])  # ZeRO-3's, emptied
    optimizer = _adamw([matrix, norm], OptimConfig(weight_decay=0.1))
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays == {id(matrix): 0.1, id(norm): 0.0}


def _final_weights(tmp_path: Path, name: str, data: Path, extra: list[str]) -> dict:
    out = tmp_path / name
    sets = [
        f"model.name_or_path={tmp_path / 'model'}",
        "model.arch={}",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=0",
        "train.samples_per_step=4",
        "train.max_steps=2",
        "train.device=cpu",
        "optim.warmup_ratio=0",
        "optim.lr=1e-2",
        "optim.weight_decay=1.0",  # 1% of every matrix a step: far above the sums' noise
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        *extra,
    ]
    argv = [sys.executable, "-m", "reflectioncoder.cli", "train", "--preset", "tiny"]
    for s in sets:
        argv += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # no launcher: one process
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.mark.slow  # two CLI runs, DeepSpeed's start-up: about 40 s on the shared 2 cores
def test_zero3_from_disk_decays_as_one_process(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 12, seed=seed, generation_fraction=0.0)
    save_tiny_model(tmp_path / "model", data.read_text().splitlines(), seed, num_layers=2)
    plain = _final_weights(tmp_path, "plain", data, ["distributed.backend=none"])
    zero3 = _final_weights(
        tmp_path, "zero3", data, ["distributed.backend=deepspeed", "distributed.zero_stage=3"]
    )
    assert plain.keys() == zero3.keys()
    for key, value in plain.items():
        torch.testing.assert_close(zero3[key], value, rtol=0, atol=1e-4, msg=key)
