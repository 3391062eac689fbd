"""The authors' recipe as the end-to-end baseline (issue 19, item 2; bench/providers/
train_step.py's ``reference``), checked on what it runs: one sample per micro-batch (a
reflection sample's teacher row and a full-length student row with the original positions, a
generation sample one row), the student's visibility as a 2-D mask with zeros inside the
sequence through the model's own attention (SDPA on a CPU, labelled), gradient checkpointing
on, fp32 master weights for bf16 weights, full-vocabulary logits of every row; and its FLOPs
counted on 2 L tokens a reflection sample, so samples/s is the figure to compare."""

from __future__ import annotations

import torch

from bench.providers import train_step as ts

CFG = ts.TrainStepConfig(
    vocab=400, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, samples=4, steps=1,
    instruction=(10, 20), reflection=(30, 60), answer=(10, 20), generation_fraction=0.3,
    dtype="bf16", seed=11,
)  # fmt: skip


def test_the_recipe_runs_as_the_authors_do():
    model, opt, data, step = ts.setup_provider("reference", CFG)
    assert ts.reference_attention(CFG) == "sdpa"  # the CPU's stand-in for flash_attention_2
    assert model.config._attn_implementation == "sdpa"
    assert model.is_activation_checkpointing
    assert isinstance(opt, ts.Fp32MasterAdamW)
    assert all(m.dtype == torch.float32 for m in opt.masters)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    (items,) = data
    assert len(items) == CFG.samples  # one sample per micro-batch
    calls = []
    forward = model.forward

    def seen(*a, **k):
        out = forward(*a, **k)
        calls.append((k["input_ids"], k["position_ids"], k["attention_mask"], out.logits))
        return out

    model.forward = seen
    loss, tokens = step(model, opt, items, CFG)
    assert torch.isfinite(loss)
    kinds = set()
    for ids, positions, mask, logits in calls:
        rows, length = ids.shape
        assert mask.shape == (rows, length) and mask.dim() == 2  # 2-D, padding-style
        assert logits.shape == (rows, length, CFG.vocab)  # full logits, every row
        assert torch.equal(positions, torch.arange(length).expand(rows, length))
        if rows == 2:  # a reflection sample: teacher + a full-length student
            assert torch.equal(ids[0], ids[1]) and bool(mask[0].all())
            # zeros inside the sequence (SPEC §3: the first instruction and hidden reflection),
            # not padding at its end: the answer after them is seen
            assert not bool(mask[1].all()) and bool(mask[1][-1])
        kinds.add(rows)
    assert kinds == {1, 2}  # generation samples beside reflection ones
    assert tokens == sum(ids.numel() for ids, *_ in calls)
    flops = ts.step_flops("reference", model, items, CFG)
    assert flops.hardware > flops.model  # the recompute of checkpointing is counted
