"""``configs/paper.yaml`` runs as written once pointed at local model and data folders (bf16;
in one process here, so the one-process engine with fp32 masters: ``backend: auto``), and
stops with one clear line while it names folders that are not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from test_gradient_checkpointing import save_tiny_model

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

REPO_ROOT = Path(__file__).resolve().parent.parent


def _train(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    cmd = [sys.executable, "-m", "reflectioncoder.cli", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)


def test_paper_config_names_its_missing_model_folder():
    proc = _train("--config", "configs/paper.yaml")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.name_or_path" in lines[0], proc.stderr
    assert "/models/deepseek-coder-6.7b-base" in lines[0]


def test_paper_config_runs_when_pointed_at_local_folders(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 12, seed=seed)
    save_tiny_model(tmp_path / "model", data.read_text().splitlines(), seed)
    out = tmp_path / "run"
    sets = [
        f"model.name_or_path={tmp_path / 'model'}",
        f"data.files=[{data}]",
        "data.upsample=null",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"checkpoint.out_dir={out}",
        "train.max_steps=2",
        "train.samples_per_step=4",
    ]
    proc = _train("--config", "configs/paper.yaml", *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "single engine, AdamW (fused), fp32 master weights, torch.bfloat16" in proc.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "final" / "config.json").is_file()


@pytest.mark.parametrize("world", [1, 8])
def test_paper_preset_is_deepspeed_zero1_on_several_ranks_and_one_process_on_one(
    monkeypatch, world
):
    """``backend: auto``: a launcher's WORLD_SIZE > 1 (torchrun, deepspeed) starts DeepSpeed at
    the preset's ZeRO-1; one rank starts no process group and runs the one-process engine."""
    import torch

    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train import distributed
    from reflectioncoder.train.deepspeed_config import deepspeed_config

    started = []
    stub = types.ModuleType("deepspeed")  # setup's only DeepSpeed call, recorded
    stub.init_distributed = lambda **kwargs: started.append(kwargs)
    monkeypatch.setitem(sys.modules, "deepspeed", stub)
    for key, value in (("WORLD_SIZE", world), ("RANK", 0), ("LOCAL_RANK", 0)):
        monkeypatch.setenv(key, str(value))
    cfg = load_config(base="paper", overrides=["data.files=[x.jsonl]"])
    info = distributed.setup(cfg.distributed, device="cpu")
    assert info.deepspeed is (world > 1) and info.world_size == world
    assert [s["dist_backend"] for s in started] == (["gloo"] if world > 1 else [])
    if world > 1:
        assert deepspeed_config(cfg, info)["zero_optimization"]["stage"] == 1
    else:
        assert not torch.distributed.is_initialized()
