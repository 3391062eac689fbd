"""bench.bench_host_replay: the measured CLI step's code (de58a14) replayed on the CPU finds the
host syncs that step had: the loss plan's nonzero, the teacher-CE pass's, the tolist after
clipping (slow: one short run of that commit's ``reflectioncoder train``)."""

from __future__ import annotations

import subprocess

import pytest

from bench import bench_host_replay as replay


@pytest.mark.slow
def test_cli_replay_finds_the_steps_syncs(tmp_path):
    try:
        site = replay.extract(replay.COMMITS["cli"], tmp_path)
    except subprocess.CalledProcessError:
        pytest.skip("de58a14 is not in this clone's history")
    out = replay._run_child("cli", site, 4, count_syncs=True)
    syncs = out["syncs"]
    nonzero = {k: n for k, n in syncs.items() if k.startswith("nonzero")}
    assert sum(nonzero.values()) == 2 and all("fused_loss_torch.py" in k for k in nonzero)
    tolist = {k: n for k, n in syncs.items() if k.startswith("tolist")}
    assert tolist == {"tolist @ reflectioncoder/train/distributed.py:421": 1}
    steps = out["steps"]
    assert [s["tokens"] for s in steps[1:]] == [7920, 7646, 7635]  # CLI_STEPS' tokens
    assert all(len(s["segments_main_cpu_s"]) == 4 for s in steps)
    assert out["ops"] > 1000
