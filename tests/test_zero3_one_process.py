"""DeepSpeed ZeRO-3 in one process started without a launcher (``reflectioncoder train --set
distributed.backend=deepspeed --set distributed.zero_stage=3`` on one GPU, or here on the CPU
over gloo), on a model loaded from disk whose vocabulary grows by the seven special tokens:
the run starts, trains, and logs the same losses as plain PyTorch, step for step. (Found on a
lent H200 by bench/bench_engines.py: the vocabulary's growth used to leave a whole,
unpartitioned embedding that the engine then failed on.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from test_gradient_checkpointing import save_tiny_model

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

REPO_ROOT = Path(__file__).resolve().parent.parent


def _train(tmp_path: Path, name: str, data: Path, extra: list[str]) -> list[dict]:
    out = tmp_path / name
    sets = [
        f"model.name_or_path={tmp_path / 'model'}",
        "model.arch={}",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=0",
        "checkpoint.save_final=false",
        "train.samples_per_step=4",
        "train.max_steps=3",
        "train.device=cpu",
        "optim.warmup_ratio=0",
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
        env.pop(key, None)  # no launcher
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # One process under ZeRO-3 without offload is told that it gains nothing.
    assert ("ZeRO-3 in one process partitions nothing" in proc.stderr) == (
        "zero_stage=3" in extra[-1]
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_zero3_in_one_process_trains_like_plain_pytorch(tmp_path, seed) -> None:
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 12, seed=seed, generation_fraction=0.0)
    save_tiny_model(tmp_path / "model", data.read_text().splitlines(), seed, num_layers=2)
    plain = _train(tmp_path, "plain", data, ["distributed.backend=none"])
    zero3 = _train(
        tmp_path, "zero3", data, ["distributed.backend=deepspeed", "distributed.zero_stage=3"]
    )
    assert len(zero3) == len(plain) == 3
    for a, b in zip(plain, zero3, strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a["loss"], b["loss"])
