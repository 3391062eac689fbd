"""The one guard around ``deepspeed.initialize`` at ZeRO-0 in 16 bits (``_starting_step_undone``):
DeepSpeed 0.19.8's ``FP16_UnfusedOptimizer`` steps AdamW on zero gradients as it starts; both of
that step's effects are undone in one place (they were two guards, a weight-decay one around
the start and a step-count reset after it): the weights as they were, AdamW's step count 0,
the decay back for the real steps. ZeRO 1-3 and fp32 ZeRO-0 take no such step: left alone.
The whole engine's first step is checked by tests/test_review13_fp16_loss_scale.py (step count
1 after one step, the update fp32's) and tests/test_leftovers_zero0_decay.py (decayed once)."""

from __future__ import annotations

import torch

from reflectioncoder.config import OptimConfig
from reflectioncoder.train.deepspeed_engine import _starting_step_undone
from reflectioncoder.train.engine import make_adamw


def _config(stage: int, fp16: bool) -> dict:
    return {"zero_optimization": {"stage": stage}, "fp16": {"enabled": fp16}, "bf16": {}}


def _starting_step(optimizer: torch.optim.Optimizer, weight: torch.nn.Parameter) -> None:
    """What ``FP16_UnfusedOptimizer.initialize_optimizer_states`` does: a step on zeros."""
    weight.grad = torch.zeros_like(weight)
    optimizer.step()


def test_the_starting_step_leaves_no_trace():
    weight = torch.nn.Parameter(torch.randn(8, 8))
    optimizer = make_adamw([weight], OptimConfig(lr=1e-2, weight_decay=5.0))
    start = weight.detach().clone()
    with _starting_step_undone(optimizer, _config(0, True)):
        _starting_step(optimizer, weight)
    assert torch.equal(weight.detach(), start)
    assert float(optimizer.state[weight]["step"]) == 0.0
    assert optimizer.param_groups[0]["weight_decay"] == 5.0
    weight.grad = torch.ones_like(weight)
    optimizer.step()  # the first real step: AdamW's own first step (count 1), decayed once
    want = torch.nn.Parameter(start.clone())
    reference = torch.optim.AdamW([want], lr=1e-2, weight_decay=5.0)
    want.grad = torch.ones_like(want)
    reference.step()
    torch.testing.assert_close(weight.detach(), want.detach(), rtol=0, atol=0)


def test_other_stages_are_left_alone():
    for stage, fp16 in ((1, True), (3, False), (0, False)):
        weight = torch.nn.Parameter(torch.randn(4, 4))  # 2-D: a decayed group
        optimizer = make_adamw([weight], OptimConfig(lr=1e-2, weight_decay=5.0))
        with _starting_step_undone(optimizer, _config(stage, fp16)):
            assert optimizer.param_groups[0]["weight_decay"] == 5.0
            _starting_step(optimizer, weight)
        assert float(optimizer.state[weight]["step"]) == 1.0
