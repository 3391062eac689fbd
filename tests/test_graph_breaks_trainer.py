"""Regional compilation as a user turns it on (``model.compile=true``) through
``Trainer.train_step`` on the CPU with the default backend (inductor): three optimizer steps
whose micro-batches all differ in length, zero graph breaks, one graph, and no recompile
(dynamo set to raise on one), with and without checkpointing and bf16 masters (slow: inductor
builds its C++ kernels, about 80 s on one core)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from test_trainer import tiny_config
from torch._dynamo.utils import counters

from reflectioncoder.train.trainer import Trainer

CASES = {
    "plain": (),
    "checkpointing, bf16 masters, logging pass": (
        "model.gradient_checkpointing=true",
        "model.dtype=bf16",
        "logging.split_ce=true",
        "logging.log_every=1",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_trainer_never_breaks_nor_recompiles(tmp_path, seed, case):
    torch._dynamo.reset()
    counters.clear()
    extra = ("packing.max_tokens=160", "model.compile=true", *CASES[case])
    trainer = Trainer(tiny_config(tmp_path, seed, n=12, extra=extra))
    lengths = set()
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            for step in range(3):
                lengths |= {b.num_tokens for b in trainer.step_batches(step)}
                row = trainer.train_step()
                assert row["loss"] == row["loss"]  # not NaN
    finally:
        trainer.close()
    assert len(lengths) >= 3, lengths
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["frames"]["total"] == 1  # compiled once: no recompile
    torch._dynamo.reset()
