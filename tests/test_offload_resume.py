"""The optimizer offloaded to the host (``distributed.offload_optimizer``, what ``auto`` picks for
a 7B on one 80 GB GPU) resumes: ZeRO-1 asked (it runs as ZeRO-2 offloaded,
``deepspeed_config.offloaded_stage``) with DeepSpeed's CPU Adam on 2 gloo ranks, saved at step 2 and
continued, gives the uninterrupted offloaded run's steps (same samples and tokens, losses within
test_distributed's tolerance). So does a checkpoint that older code wrote running ZeRO-1
offloaded as ZeRO-1 (its layout says ZeRO-1): converted, with the log saying so."""

from __future__ import annotations

import json
import sys

import pytest
from test_distributed import TOLERANCE, _overrides, _rows
from test_resume_anywhere import STEPS, STOP, _part, _run, zero

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

    _same_steps(_rows(straight), _rows(resumed))

    # a ZeRO-1 offloaded checkpoint of the code before offloaded_stage (this file's driver)
    older = tmp_path / "older"
    _run(_overrides(data, older, seed, "sample") + common + OFFLOAD, 2, False, STOP, __file__)
    assert read_trainer_state(step_dir(older, STOP))["layout"]["zero_stage"] == 1
    log = _run(_overrides(data, older, seed, "sample") + common + OFFLOAD, 2, True, None)
    assert "ZeRO-2 (ZeRO-1 asked: offloaded, it runs as 2)" in log
    assert "was written by DeepSpeed ZeRO-1 on 2 rank(s); this run is DeepSpeed ZeRO-2" in log
    _same_steps(_rows(straight), _rows(older))


def _same_steps(want: list[dict], got: list[dict]) -> None:
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for w, g in zip(want, got, strict=True):
        assert (g["samples"], g["tokens"]) == (w["samples"], w["tokens"]), g["step"]
        for key, rel, abs_ in TOLERANCE:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=abs_), (g["step"], key)
    assert got[-1]["loss"] != got[STOP - 1]["loss"]  # the resumed part really trained


if __name__ == "__main__":  # a part run by the code before offloaded_stage, one process a rank
    import logging

    import reflectioncoder.train.deepspeed_config as deepspeed_config

    logging.basicConfig(level=logging.INFO)
    deepspeed_config.offloaded_stage = lambda stage: stage  # ZeRO-1 offloaded ran as ZeRO-1
    spec = json.loads(sys.argv[1])
    _part(spec["overrides"], spec["resume"], spec["stop"])
