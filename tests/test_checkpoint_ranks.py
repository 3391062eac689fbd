"""A run of several ranks saves its checkpoints: 2 ranks over gloo (torchrun, the CLI) write
into one temporary folder and rank 0 alone renames it and prunes the old ones. (When every rank
renamed, the second rank's rename found no temporary folder and the run stopped at its first
checkpoint: "not saved: No such file or directory".)"""

from __future__ import annotations

import json

import pytest
from test_distributed import ARCH, _torchrun_cli

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


@pytest.mark.slow
def test_two_ranks_save_and_prune_their_checkpoints(tmp_path):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 10, seed=0, generation_fraction=0.2)
    out = tmp_path / "run"
    proc = _torchrun_cli(
        [
            ARCH,
            "model.tokenizer_vocab_size=400",
            f"data.files=[{data}]",
            f"checkpoint.out_dir={out}",
            "checkpoint.save_every=1",
            "checkpoint.keep_last=1",
            "train.samples_per_step=5",
            "train.max_steps=2",
            "logging.progress=false",
            "logging.report_to=[none]",
        ]
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    saved = out / "checkpoints"
    assert sorted(p.name for p in saved.iterdir()) == ["step-000002"]  # step 1 pruned
    step = saved / "step-000002"
    assert (step / "COMPLETE").is_file()
    assert json.loads((step / "trainer_state.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (step / "rng").iterdir()) == [
        "rank-00000.pt",
        "rank-00001.pt",
    ]  # both ranks' files in the one checkpoint
