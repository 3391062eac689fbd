"""``configs/paper.yaml`` runs as written once pointed at local model and data folders (bf16;
in one process here, so the one-process engine with fp32 masters: ``backend: auto``), and
stops with one clear line while it names folders that are not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
