"""The optimizer offloaded to the host (``distributed.offload_optimizer``, what ``auto`` picks for
a 7B on one 80 GB GPU) resumes: DeepSpeed ZeRO-1 with DeepSpeed's CPU Adam on 2 gloo ranks,
saved at step 2 and continued, gives the uninterrupted offloaded run's steps (same samples and
tokens, losses within test_distributed's tolerance)."""

from __future__ import annotations

import pytest
from test_distributed import TOLERANCE, _overrides, _rows
from test_resume_anywhere import STEPS, STOP, _run, zero

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.checkpoint import read_trainer_state, step_dir

OFFLOAD = [*zero(1), "distributed.offload_optimizer=true"]


@pytest.mark.slow  # DeepSpeed builds its CPU Adam op on first use (minutes), then 3 torchruns
def test_an_offloaded_run_resumes_as_if_uninterrupted(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    common = [f"train.max_steps={STEPS}", "train.epochs=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    log = _run(_overrides(data, straight, seed, "sample") + common + OFFLOAD, 2, False, None)
    assert "DeepSpeedCPUAdam offloaded" in log
    _run(_overrides(data, resumed, seed, "sample") + common + OFFLOAD, 2, False, STOP)
    assert read_trainer_state(step_dir(resumed, STOP))["layout"]["world_size"] == 2
    log = _run(_overrides(data, resumed, seed, "sample") + common + OFFLOAD, 2, True, None)
    assert f"at step {STOP}" in log

    want, got = _rows(straight), _rows(resumed)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for w, g in zip(want, got, strict=True):
        assert (g["samples"], g["tokens"]) == (w["samples"], w["tokens"]), g["step"]
        for key, rel, abs_ in TOLERANCE:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=abs_), (g["step"], key)
    assert got[-1]["loss"] != got[STOP - 1]["loss"]  # the resumed part really trained
