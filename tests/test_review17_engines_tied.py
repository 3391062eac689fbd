"""Every engine on 2 gloo ranks trains a tied-embedding Llama as one process does, with what the
other equivalence tests leave at their defaults: weight decay on, gradients clipped
(grad_clip 0.5 under norms of about 1-1.5), and a last step of one sample (13 samples, 4 a step:
one rank runs a zero-weight filler). Same samples and tokens per step, the losses and norms
within test_distributed's tolerance, and the same final folder: keys (one tensor for the tied
embedding and LM head) and weights. (FSDP2's folder had a separate ``lm_head.weight``.)"""

from __future__ import annotations

import pytest
from safetensors.torch import load_file
from test_distributed import TOLERANCE, _overrides, _rows
from test_fsdp_engine import _same_rows, _torchrun
from test_local_engine_ranks import same_final_weights

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

TIED = (
    "model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4, "
    "num_kv_heads: 2, max_position_embeddings: 512, tie_word_embeddings: true}"
)
LAYOUTS = {
    "ddp": ["distributed.backend=none"],
    "zero1": ["distributed.backend=deepspeed", "distributed.zero_stage=1"],
    "zero3": ["distributed.backend=deepspeed", "distributed.zero_stage=3"],
    "fsdp": ["distributed.backend=fsdp"],
}


def _run_overrides(data, out, seed: int, layout: list[str]) -> list[str]:
    overrides = _overrides(data, out, seed, "sample") + [
        TIED,
        "train.samples_per_step=4",
        "optim.weight_decay=0.1",
        "optim.grad_clip=0.5",
    ]
    return overrides + layout


@pytest.mark.slow  # one process, then 2 ranks per engine: 20-30 s each on the shared 2 cores
@pytest.mark.parametrize("engine", sorted(LAYOUTS))
def test_two_ranks_train_a_tied_model_as_one_process(tmp_path, seed, engine):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 13, seed=seed, generation_fraction=0.2)
    single, multi = tmp_path / "single", tmp_path / engine
    for out, layout, ranks in (
        (single, ["distributed.backend=none"], 1),
        (multi, LAYOUTS[engine], 2),
    ):
        spec = {"overrides": _run_overrides(data, out, seed, layout), "resume": False, "stop": None}
        _torchrun(spec, ranks)
    want, got = _rows(single), _rows(multi)
    assert [r["samples"] for r in want] == [4, 4, 4, 1]
    assert any(r["grad_norm"] > 0.5 for r in want)  # clipping at work
    _same_rows(want, got, TOLERANCE)
    a = load_file(str(single / "final" / "model.safetensors"))
    b = load_file(str(multi / "final" / "model.safetensors"))
    assert "lm_head.weight" not in a
    same_final_weights(a, b, "fp32", len(want))
