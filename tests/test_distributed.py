"""Data parallelism on the CPU: 2 processes over gloo with DeepSpeed ZeRO-2 and ZeRO-3 log the
same losses as one process, for several steps of the full method (teacher, student, dynamic
mask, KL), with ranks holding unequal numbers of micro-batches; a NaN step is skipped on every
rank alike; the saved model (ZeRO-3: gathered from the partitions) equals the single
process's."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_gradient_checkpointing import save_tiny_model

from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
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


def poison_step(trainer: Trainer, step: int) -> None:
    """Make optimizer step ``step`` produce a NaN loss on every rank (its update must be
    skipped everywhere, and the run go on)."""
    real = trainer.step_batches

    def poisoned(k: int):
        batches = real(k)
        if k == step:
            b = batches[0]
            b.ce_weight = b.ce_weight.clone()
            b.ce_weight[0] = float("nan")
        return batches

    trainer.step_batches = poisoned


def _train(overrides: list[str], poison: int | None) -> None:
    trainer = Trainer(load_config(base="tiny", overrides=overrides))
    if poison is not None:
        poison_step(trainer, poison)
    trainer.train()
    trainer.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, normalisation, poison",
    [(2, "sample", None), (3, "token", 1)],
    ids=["zero2-sample-cli", "zero3-token-nan-skip"],
)
def test_two_ranks_zero_match_one_process(tmp_path, seed, stage, normalisation, poison):
    """ZeRO-2 runs through the ``reflectioncoder train`` command; ZeRO-3 through this file as
    a driver, with step 2 poisoned (NaN) on both sides: skipped alike, then training goes on."""
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    single, multi = tmp_path / "single", tmp_path / "multi"
    steps = 3 if poison is None else 4
    common = [f"train.max_steps={steps}", "train.epochs=2"]
    if stage == 3:  # a model from disk: ZeRO-3 loads it straight into the partitions
        save_tiny_model(tmp_path / "model", data.read_text().splitlines(), seed)
        common.append(f"model.name_or_path={tmp_path / 'model'}")
    _train(_overrides(data, single, seed, normalisation) + common, poison)

    env = dict(os.environ)
    # DeepSpeed JIT-builds a CPU communication op on first use (~40 s): keep it cached.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    env["OMP_NUM_THREADS"] = "1"
    overrides = _overrides(data, multi, seed, normalisation) + common
    overrides += ["distributed.backend=deepspeed", f"distributed.zero_stage={stage}"]
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args += [f"--master_port={_free_port()}"]
    if poison is None:
        args += ["-m", "reflectioncoder.cli", "train", "--preset", "tiny"]
        for o in overrides:
            args += ["--set", o]
    else:
        args += [__file__, json.dumps({"overrides": overrides, "poison": poison})]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"deepspeed ZeRO-{stage}" in proc.stderr
    assert ("model loaded into partitions" in proc.stderr) == (stage == 3)

    want, got = _rows(single), _rows(multi)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert [r["skipped"] for r in got] == [k == poison for k in range(steps)]
    assert [r["skipped"] for r in want] == [k == poison for k in range(steps)]
    for w, g in zip(want, got, strict=True):
        assert g["samples"] == w["samples"] and g["tokens"] == w["tokens"]
        if g["skipped"]:
            assert not math.isfinite(g["loss"]) and not math.isfinite(w["loss"])
            continue
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


def _torchrun_cli(overrides: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args += [f"--master_port={_free_port()}", "-m", "reflectioncoder.cli", "train"]
    args += ["--preset", "tiny"]
    for o in overrides:
        args += ["--set", o]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, expect, rel",
    [
        (
            ["distributed.zero_stage=2", "distributed.offload_optimizer=true"],
            "deepspeed ZeRO-2, DeepSpeedCPUAdam offloaded, weights torch.float32",
            1e-4,
        ),
        (
            ["distributed.zero_stage=1", "distributed.fp32_grad_accum=true", "model.dtype=bf16"],
            "grad accumulation torch.float32",
            3e-2,
        ),
        (
            ["distributed.zero_stage=2", "model.dtype=bf16"],  # fp32 sums: auto
            "deepspeed ZeRO-2, AdamW, weights torch.bfloat16, grad accumulation torch.float32",
            3e-2,
        ),
        (
            ["distributed.zero_stage=3", "model.dtype=bf16"],
            "deepspeed ZeRO-3, AdamW, weights torch.bfloat16, grad accumulation torch.float32",
            3e-2,
        ),
    ],
    ids=[
        "zero2-offload-cpu-adam",
        "zero1-bf16-fp32-grad-accum",
        "zero2-bf16-fp32-sums",
        "zero3-bf16-fp32-sums",
    ],
)
def test_two_ranks_offload_and_fp32_accumulation(tmp_path, seed, extra, expect, rel):
    """ZeRO-Offload runs DeepSpeed's CPU Adam (the first build of the op takes minutes) and
    logs one process's losses; bf16 weights with fp32 gradient sums (ZeRO-1: DeepSpeed's BF16
    optimizer; ZeRO-2/3: an fp32 partition, by default) log one bf16 process's losses to bf16
    precision."""
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = ["train.max_steps=3", "train.epochs=2"]
    dtype = [o for o in extra if o.startswith("model.dtype")]
    _train(_overrides(data, single, seed, "sample") + common + dtype, None)
    overrides = _overrides(data, multi, seed, "sample") + common + extra
    proc = _torchrun_cli(overrides + ["distributed.backend=deepspeed"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert expect in proc.stderr
    want, got = _rows(single), _rows(multi)
    assert [r["step"] for r in got] == [1, 2, 3] and not any(r["skipped"] for r in got)
    for w, g in zip(want, got, strict=True):
        assert g["samples"] == w["samples"] and g["tokens"] == w["tokens"]
        assert g["loss"] == pytest.approx(w["loss"], rel=rel), g["step"]
    assert got[-1]["loss"] != got[0]["loss"]  # the optimizer really stepped


if __name__ == "__main__":  # the ZeRO-3 case's driver, one process per rank under torchrun
    import logging

    logging.basicConfig(level=logging.INFO)
    spec = json.loads(sys.argv[1])
    _train(spec["overrides"], spec["poison"])
