"""Residual and embedding dropout stay as the model's config says (docs/training.md, "Dropout"):
the model's own modules apply them in train mode, and a layer recomputed in the backward
(every checkpointing policy) replays the masks its forward drew, so its gradients are those
of the same step without checkpointing. With the layers compiled (``model.compile: true``, which
the trainer honours on a CPU too: inductor, as on CUDA) the recompute replays them as well;
tests/test_gpu_capabilities.py checks the same on a GPU, the dropout set by config overrides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from reflectioncoder.activation_checkpointing import apply_plan
from reflectioncoder.model import forward_hidden, prepare_model

PLAN = ("full", "save_gemms", "mlp_rerun", "offload")
COMPILED_PLAN = ("full", "save_gemms", "mlp_rerun", "none")


def _model(plan, compiled: bool = False):
    """The tiny Starcoder2 under ``plan``, its layers then compiled when ``compiled`` (in the
    trainer's order: ``offload`` layers stay eager)."""
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    config = Starcoder2Config(vocab_size=128, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=len(plan), num_attention_heads=4,
                              num_key_value_heads=2, attention_dropout=0.0,
                              residual_dropout=0.1, embedding_dropout=0.1)  # fmt: skip
    torch.manual_seed(1)
    model = Starcoder2ForCausalLM(config)
    prepare_model(model, liger=False)
    apply_plan(model, plan)
    if compiled:
        from reflectioncoder.model import compile_layers

        compile_layers(model)  # inductor, as the trainer's model.compile: true
    return model


def _run(model, seed=0):
    model.zero_grad(set_to_none=True)
    ids = torch.randint(0, 128, (64,), generator=torch.Generator().manual_seed(3))
    lens = [24, 40]
    batch = SimpleNamespace(input_ids=ids, position_ids=torch.cat([torch.arange(n) for n in lens]),
                            cu_seqlens=torch.tensor([0, 24, 64], dtype=torch.int32),
                            max_seqlen=40, seq_lens=lens)  # fmt: skip
    torch.manual_seed(seed)  # the masks drawn
    logits = forward_hidden(model, batch) @ model.lm_head.weight.T
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _loss_and_grads(plan, seed=0):
    return _run(_model(plan), seed)


@pytest.mark.parametrize("plan", [PLAN, PLAN[::-1]])
def test_recomputed_layers_replay_the_dropout_masks(plan):
    want_loss, want = _loss_and_grads(("none",) * len(plan))
    other_loss, _ = _loss_and_grads(("none",) * len(plan), seed=1)
    assert other_loss != want_loss  # dropout is on: other masks, another loss
    loss, grads = _loss_and_grads(plan)
    assert loss == want_loss
    for name, g in want.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow  # inductor compiles the layer on the CPU: about a minute
def test_compiled_recomputed_layers_replay_the_dropout_masks():
    """As the trainer runs ``model.compile: true`` on a CPU (``compile_layers``: inductor; the
    plan given before compiling, as the trainer does): every recomputing policy of a compiled
    layer replays its masks, the same loss and gradients as the compiled layers without
    checkpointing."""
    torch._dynamo.reset()
    none = _model(("none",) * len(PLAN), compiled=True)
    want_loss, want = _run(none)
    assert _run(none, seed=1)[0] != want_loss
    # not offload: its layers stay eager, and an eager layer draws its masks from torch's own
    # generator where inductor's draw seeds from it: other masks, whatever the recompute does
    for plan in (COMPILED_PLAN, COMPILED_PLAN[::-1]):
        loss, grads = _run(_model(plan, compiled=True))
        assert loss == want_loss
        for name, g in want.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)
