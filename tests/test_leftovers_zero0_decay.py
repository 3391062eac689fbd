"""DeepSpeed ZeRO-0 in 16 bits with weight decay: no decay before the first gradient.

DeepSpeed 0.19.8's 16-bit optimizer at ZeRO-0 (``FP16_UnfusedOptimizer``, which bf16 takes too)
steps AdamW on zero gradients as it starts, to create AdamW's state. AdamW's decoupled weight
decay shrank every fp32 master by lr x weight_decay then, so the first real step carried the
decay twice. Measured on the tiny model at weight_decay 10 (lr 2e-3): the fp32 masters 1.7e-3
from the weights before any step, the first update 21.9% off the one-process fp32 engine's
(the decay is 22% of that update); after the fix the masters equal the weights and the update
is 1.7% off (fp16's error)."""

from __future__ import annotations

import pytest
import torch
from test_review13_fp16_loss_scale import _run, _script_output

DECAY = "optim.weight_decay=20.0"  # large, so that one decay too many is a large error

# One DeepSpeed engine a process: start it, compare its fp32 masters with the weights before
# any step, take the first step by hand, and save how far each master moved from the weight
# it started as (in the order of the model's parameters, as ``_first_step``'s update).
ZERO0_START = """
import json, sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_review13_fp16_loss_scale as t
from test_trainer import tiny_config
from reflectioncoder.train.trainer import Trainer
folder, seed, dtype, decay = Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
extra = (f"model.dtype={dtype}", "distributed.backend=deepspeed", "distributed.zero_stage=0", decay)
trainer = Trainer(tiny_config(folder, seed, extra=extra))
opt = trainer.engine.optimizer
weights = [p for g in opt.fp16_groups for p in g]
master = {id(w): m for w, m in zip(weights, [p for g in opt.fp32_groups for p in g])}
moved = max(float((master[id(w)].detach() - w.detach().float()).abs().max()) for w in weights)
decays = sorted({g["weight_decay"] for g in opt.param_groups})
params = [p for p in trainer.model.parameters() if id(p) in master]
start = [p.detach().float().clone() for p in params]
result, _ = t._first_step(trainer, 1.0)
update = torch.cat([(master[id(p)].detach() - w).flatten() for p, w in zip(params, start)])
torch.save(update, folder / "update.pt")
print(json.dumps([type(opt).__name__, moved, decays, result.applied]))
"""


def _zero0_first_step(tmp_path, seed, dtype):
    folder = tmp_path / "deepspeed"
    folder.mkdir()
    name, moved, decays, applied = _script_output(ZERO0_START, str(folder), str(seed), dtype, DECAY)
    return name, moved, decays, applied, torch.load(folder / "update.pt")


@pytest.mark.slow  # a DeepSpeed process and two one-process engines: about 40 s of CPU each
@pytest.mark.parametrize(("dtype", "tolerance"), [("fp16", 5e-2), ("bf16", 1e-1)])
def test_zero0_16bit_first_step_decays_once(tmp_path, seed, dtype, tolerance):
    name, moved, decays, applied, update = _zero0_first_step(tmp_path, seed, dtype)
    assert name == "FP16_UnfusedOptimizer"  # the optimizer that steps as it starts
    assert moved == 0.0, f"the fp32 masters moved {moved:.2e} before any gradient step"
    assert decays == [0.0, 20.0]  # the decay is back for the real steps (norms/biases none)
    assert applied
    want, want_update, _ = _run(tmp_path, seed, "fp32", 1.0, DECAY)
    _, no_decay_update, _ = _run(tmp_path / "no_decay", seed, "fp32", 1.0)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(no_decay_update, want_update) > 3 * tolerance  # the decay is worth checking
    err = rel(update, want_update)
    assert err <= tolerance, f"first update off by {err:.2e} of the one-process fp32 engine's"


def test_no_decay_while_deepspeed_starts_a_16bit_zero0_optimizer(seed):
    """The mechanism on torch's AdamW: the step on zero gradients DeepSpeed takes as it starts
    leaves the weights as they were inside ``_starting_step_undone`` (it shrank them by
    lr x weight_decay), and the decay is back for the next, real step. ZeRO 1-3 and fp32 ZeRO-0
    take no such step: their decay is left alone."""
    from reflectioncoder.config import OptimConfig
    from reflectioncoder.train.deepspeed_engine import _starting_step_undone
    from reflectioncoder.train.engine import make_adamw

    def config(stage, fp16):
        return {"zero_optimization": {"stage": stage}, "fp16": {"enabled": fp16}, "bf16": {}}

    weight = torch.nn.Parameter(torch.randn(8, 8))
    optimizer = make_adamw([weight], OptimConfig(lr=1e-2, weight_decay=5.0))
    start = weight.detach().clone()
    with _starting_step_undone(optimizer, config(0, True)):
        weight.grad = torch.zeros_like(weight)  # FP16_UnfusedOptimizer.initialize_optimizer_states
        optimizer.step()
    assert torch.equal(weight.detach(), start)
    assert optimizer.param_groups[0]["weight_decay"] == 5.0
    optimizer.step()  # a real step on the same zero gradient: the decay alone moves the weights
    torch.testing.assert_close(weight.detach(), start * (1 - 1e-2 * 5.0))
    for stage, fp16 in ((1, True), (3, False), (0, False)):
        with _starting_step_undone(optimizer, config(stage, fp16)):
            assert optimizer.param_groups[0]["weight_decay"] == 5.0
