"""Data parallelism on the CPU: 2 processes over gloo with DeepSpeed ZeRO-2 and ZeRO-3 log the
same losses as one process, for several steps of the full method (teacher, student, dynamic
mask, KL), with ranks holding unequal numbers of micro-batches; the ZeRO-3 run's saved model
(gathered from the partitions) equals the single process's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reflectioncoder.config import load_config
from reflectioncoder.train.toydata import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parent.parent
ARCH = (
    "model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4, "
    "num_kv_heads: 2, max_position_embeddings: 512}"
)


TOLERANCE = [
    ("loss", 1e-5, 0.0),
    ("ce", 1e-5, 0.0),
    ("teacher_ce", 1e-5, 0.0),
    ("kl", 1e-3, 1e-7),
    ("grad_norm", 1e-4, 0.0),
]


def _overrides(data: Path, out: Path, seed: int, normalisation: str) -> list[str]:
    return [
        ARCH,
        "model.tokenizer_vocab_size=400",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=0",
        f"train.seed={seed}",
        "train.epochs=1",
        "train.samples_per_step=5",
        "train.max_steps=3",
        "optim.lr=3e-3",
        "optim.warmup_ratio=0",
        "mask.strategies=[random_token_mask, block_mask]",
        f"packing.normalisation={normalisation}",
        # ~1-2 samples per micro-batch: 3-5 micro-batches per step, so ranks are unequal.
        "packing.max_tokens=300",
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


@pytest.mark.slow
@pytest.mark.parametrize("stage, normalisation", [(2, "sample"), (3, "token")])
def test_two_ranks_zero_match_one_process(tmp_path, seed, stage, normalisation):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    single, multi = tmp_path / "single", tmp_path / "multi"

    trainer = Trainer(
        load_config(base="tiny", overrides=_overrides(data, single, seed, normalisation))
    )
    trainer.train()
    trainer.close()

    env = dict(os.environ)
    # DeepSpeed JIT-builds a CPU communication op on first use (~40 s): keep it cached.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    env["OMP_NUM_THREADS"] = "1"
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "reflectioncoder.cli",
        "train",
        "--preset",
        "tiny",
    ]
    for o in _overrides(data, multi, seed, normalisation) + [
        "distributed.backend=deepspeed",
        f"distributed.zero_stage={stage}",
    ]:
        args += ["--set", o]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"deepspeed ZeRO-{stage}" in proc.stderr

    want, got = _rows(single), _rows(multi)
    assert [r["step"] for r in got] == [1, 2, 3]
    for w, g in zip(want, got, strict=True):
        assert g["samples"] == w["samples"] and g["tokens"] == w["tokens"]
        # float32 sums in another order (2 ranks, 1 thread each): KL, a difference of nearly
        # equal terms, keeps an absolute error of ~1e-8.
        for key, rel, abs_ in TOLERANCE:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=abs_), (g["step"], key)
    assert any(r["kl"] > 0 for r in want)  # the student really saw less than the teacher

    # The final weights (ZeRO-3: gathered from both ranks' partitions) equal one process's.
    a = load_file(str(single / "final" / "model.safetensors"))
    b = load_file(str(multi / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k].float(), a[k].float(), rtol=1e-4, atol=1e-5, msg=k)
