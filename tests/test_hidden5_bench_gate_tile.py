"""Issue 14's gate on another kernel than tests/test_bench_gate.py's, slowed the other way the
issue names: the fused loss (ours, PyTorch backend, forward) given a smaller tile (8 rows a
chunk instead of the CPU budget's 2048 at V = 8192: the LM head is streamed 32-128 times a
call). `make bench` saves a run; `make bench-compare` passes the unchanged code and fails the
smaller tile, naming the regressed row."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent

SMALL_TILE_PLUGIN = """
import dataclasses
import importlib

schedule = importlib.import_module("reflectioncoder.kernels.fused_loss_schedule")
schedule.CPU_BUDGET = dataclasses.replace(schedule.CPU_BUDGET, max_rows=8)
"""


def _make(target: str, storage: Path, extra_env: dict | None = None, args: str = ""):
    cmd = [
        "make", "-s", "-o", f"{VENV}/.installed", f"VENV={VENV}", target,
        f"BENCH_STORAGE={storage}", "BENCH_PATHS=bench/test_loss.py",
        f'BENCH_ARGS=-k "fwd and ours:torch" {args}',
    ]  # fmt: skip
    env = dict(os.environ, RC_BENCH_PROFILE="cpu", OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three pytest-benchmark runs through make: a minute, more on a loaded CPU
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_bench_compare_fails_on_a_smaller_loss_tile(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    saved = _make("bench", storage)
    assert saved.returncode == 0, saved.stdout[-3000:] + saved.stderr[-3000:]
    same = _make("bench-compare", storage)
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]

    (tmp_path / "rc_small_tile.py").write_text(SMALL_TILE_PLUGIN)
    slowed = _make("bench-compare", storage, {"PYTHONPATH": str(tmp_path)}, "-p rc_small_tile")
    out = slowed.stdout + slowed.stderr
    assert slowed.returncode != 0, "make bench-compare passed the fused loss at 8 rows a chunk"
    assert "Performance has regressed" in out and "ours:torch" in out, out[-3000:]
