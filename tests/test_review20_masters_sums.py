"""bf16 weights with fp32 masters in the one-process engine (issue 19, item 3): the step's
gradient, summed over its micro-batches, is held in fp32 by the optimizer's masters (the bf16
weights keep none), bitwise the fp32 sum of each micro-batch's bf16 gradient, not a bf16
running sum; after the step the bf16 weights are the masters rounded."""

from __future__ import annotations

import copy

import torch
from test_trainer import tiny_config

from reflectioncoder.train.trainer import Trainer


def test_micro_batch_gradients_sum_in_fp32_masters(tmp_path, seed):
    extra = ("model.dtype=bf16", "packing.max_tokens=160", "optim.grad_clip=0")
    trainer = Trainer(tiny_config(tmp_path, seed, n=12, extra=extra))
    engine = trainer.engine
    try:
        trainer.train_step()  # a step in: the moments exist, the weights moved
        batches = trainer.step_batches(trainer.step)
        assert len(batches) >= 2
        twin = copy.deepcopy(engine.module)  # the same bf16 weights, run by hand
        want = [torch.zeros_like(w, dtype=torch.float32) for w in twin.parameters()]
        in_bf16 = [torch.zeros_like(w) for w in twin.parameters()]  # a bf16 running sum
        for batch in batches:
            twin(batch, False)[0].backward()
            for total, low, w in zip(want, in_bf16, twin.parameters(), strict=True):
                assert w.grad.dtype == torch.bfloat16
                total += w.grad.float()
                low += w.grad
                w.grad = None
        seen = {}
        launch = engine.optimizer.step

        def capture(*a, **k):
            seen["weights"] = [w.grad for w in engine.weights]
            seen["masters"] = [m.grad.clone() for m in engine.params]
            return launch(*a, **k)

        engine.optimizer.step = capture
        trainer.train_step()
    finally:
        trainer.close()
    assert all(g is None for g in seen["weights"])  # the bf16 weights hold no gradient
    assert all(g.dtype == torch.float32 for g in seen["masters"])
    for got, total in zip(seen["masters"], want, strict=True):
        assert torch.equal(got, total)
    # what the check tells apart: a bf16 running sum differs from the fp32 one
    assert any(not torch.equal(t, b.float()) for t, b in zip(want, in_bf16, strict=True))
    for w, m in zip(engine.weights, engine.params, strict=True):
        assert w.dtype == torch.bfloat16 and m.dtype == torch.float32
        assert torch.equal(w, m.to(torch.bfloat16))
