"""hidden7: issue 4's optimizer step against float64: the logged gradient norm is the norm of
SPEC §2's step-loss gradient (summed over micro-batches, before clipping), and the weights after
each step are AdamW's update of that gradient clipped to ``optim.grad_clip``.

Two steps, several micro-batches each (``packing.max_tokens`` of 200: a reflection sample and
its student fill one), the clip active at both steps with different factors (so the moments of
step 2 mix two clipped gradients). The float64 reference is the reference recipe (padded,
doubled batch, masked eager attention, full logits) and ``torch.optim.AdamW`` on float64
copies of the weights. A clip off by 1% fails it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from reference.recipe import REFERENCE_ATTN, reference_logits, reference_loss
from test_trainer import step_samples, tiny_config

from reflectioncoder.train.schedule import lr_at
from reflectioncoder.train.trainer import Trainer


def reference_step_loss(trainer: Trainer, model64: torch.nn.Module, step: int) -> torch.Tensor:
    """SPEC §2's loss of optimizer ``step`` in float64 (with its graph), masks drawn as the
    trainer draws them: (seed, step, uid)."""
    cfg = trainer.cfg
    samples, visible = step_samples(trainer, step)
    teacher, student = reference_logits(model64, [s.ids for s in samples], visible)
    loss, _, _ = reference_loss(
        teacher,
        student,
        [s.labels for s in samples],
        [s.student_labels for s in samples],
        cfg.packing.normalisation,
        cfg.mask.kl,
    )
    return loss


CLIP = 0.4  # the tiny model's first gradients have norms of about 1-3: clipped at each step


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_grad_norm_clipping_and_adamw_match_float64(tmp_path, seed, weight_decay):
    """With weight decay, AdamW's decoupled decay (lr x decay) applies to the matrices and
    embeddings, not to the norms' 1-D weights (as Hugging Face's Trainer leaves LayerNorm
    weights and biases undecayed)."""
    cfg = tiny_config(
        tmp_path,
        seed,
        n=8,
        # eps = 1: AdamW's update is nearly linear in the gradient (with the usual 1e-8 it is
        # about lr * sign(g) at the first steps, blind to the gradient's scale and so to the clip)
        extra=(
            "packing.max_tokens=200",
            f"optim.grad_clip={CLIP}",
            "optim.eps=1.0",
            "optim.lr=0.05",
            f"optim.weight_decay={weight_decay}",
        ),
    )
    trainer = Trainer(cfg)
    try:
        model64 = copy.deepcopy(trainer.model).double()
        model64.set_attn_implementation(REFERENCE_ATTN)
        params64 = dict(model64.named_parameters())
        o = cfg.optim
        groups = [
            {
                "params": [p for p in params64.values() if p.dim() >= 2],
                "weight_decay": weight_decay,
            },
            {"params": [p for p in params64.values() if p.dim() < 2], "weight_decay": 0.0},
        ]
        adamw = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        factors = []
        for step in range(2):
            with torch.no_grad():  # the reference continues from the trainer's weights
                for name, p in trainer.model.named_parameters():
                    params64[name].copy_(p.double())
            adamw.zero_grad()
            reference_step_loss(trainer, model64, step).backward()
            norm = torch.sqrt(sum((p.grad**2).sum() for p in params64.values()))
            factor = min(1.0, CLIP / (float(norm) + 1e-6))
            factors.append(factor)
            for p in params64.values():
                p.grad.mul_(factor)
            for group in adamw.param_groups:
                group["lr"] = lr_at(step, trainer.total_steps, o)
            before = {n: p.detach().double().clone() for n, p in trainer.model.named_parameters()}
            adamw.step()
            row = trainer.train_step()
            assert not row["skipped"]
            assert row["grad_norm"] == pytest.approx(float(norm), rel=1e-4)
            assert row["lr"] > 0
            for name, p in trainer.model.named_parameters():
                got = p.detach().double() - before[name]
                want = params64[name].detach() - before[name]
                # a thousandth of the largest update, plus 2 ulps of the fp32 weight
                allowed = 1e-3 * want.abs().max() + 2.0**-22 * before[name].abs()
                err = float(((got - want).abs() / allowed).max())
                assert err <= 1, f"step {step + 1}: {name}: update off by {err:.2f} x allowed"
        assert factors[0] < 1 and factors[1] < 1 and factors[0] != factors[1]
    finally:
        trainer.close()
