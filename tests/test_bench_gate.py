"""The benchmark regression gate (`make bench`, then `make bench-compare`) catches a slowed
kernel and passes the unchanged code. Runs the real make targets on the attention forward of
our varlen path (per-segment SDPA, ~20 ms of CPU time per call: within 4% from run to run on
the shared machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent

# A pytest plugin that slows the per-segment attention kernel by a busy wait of 40 ms per call:
# the gate times CPU time on the CPU, which a sleep would not show.
SLOW_PLUGIN = """
import importlib
import time

attention = importlib.import_module("reflectioncoder.kernels.varlen_attention")
_sdpa_varlen = attention._sdpa_varlen


def _slowed(*args):
    end = time.process_time() + 0.04
    while time.process_time() < end:
        pass
    return _sdpa_varlen(*args)


attention._sdpa_varlen = _slowed
"""


def _make(target: str, storage: Path, extra_env: dict | None = None, args: str = ""):
    cmd = [
        "make", "-s", "-o", f"{VENV}/.installed", f"VENV={VENV}", target,
        f"BENCH_STORAGE={storage}", "BENCH_PATHS=bench/test_attention.py",
        f'BENCH_ARGS=-k "fwd and varlen" {args}',
    ]  # fmt: skip
    env = dict(os.environ, RC_BENCH_PROFILE="cpu", OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three pytest-benchmark runs through make: ~45 s, minutes on a loaded CPU
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_bench_compare_fails_on_a_slowed_kernel(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    missing = _make("bench-compare", storage)
    assert missing.returncode != 0 and "run make bench first" in missing.stderr

    saved = _make("bench", storage)
    assert saved.returncode == 0, saved.stdout[-3000:] + saved.stderr[-3000:]
    assert list(storage.glob("*/0001_*.json")), "make bench saved no run"

    same = _make("bench-compare", storage)
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]

    (tmp_path / "rc_slow_attention.py").write_text(SLOW_PLUGIN)
    slowed = _make("bench-compare", storage, {"PYTHONPATH": str(tmp_path)}, "-p rc_slow_attention")
    assert slowed.returncode != 0, "make bench-compare passed a kernel slowed by 40 ms per call"
    assert "Performance has regressed" in slowed.stdout + slowed.stderr
