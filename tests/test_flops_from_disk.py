"""The FLOP count (reflectioncoder.train.flops) against ``torch.utils.flop_counter`` as a user
would run it: models saved to disk and loaded back with ``load_model`` (Llama with grouped
KV heads, Qwen2 with attention biases, tied embeddings), the trainer's own attention path and
fused loss, a plain ``FlopCounterMode()`` (no custom mapping, no SDPA backend forced)."""

from __future__ import annotations

import pytest
import torch
from test_flops import _batch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, Qwen2Config

from reflectioncoder.model import build_tiny_llama, load_model, prepare_model
from reflectioncoder.train.flops import ModelShape, batch_flops, recomputed_share
from reflectioncoder.train.loss_module import ReflectionLossModule

VOCAB = 1000


def _llama(seed, tied=False):
    return build_tiny_llama(
        VOCAB,
        hidden_size=96,
        num_layers=3,
        num_heads=6,
        num_kv_heads=2,
        intermediate_size=256,
        tie_word_embeddings=tied,
        seed=seed,
    )


def _qwen2(seed):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=224,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config)


BUILD = {"llama": _llama, "llama_tied": lambda s: _llama(s, tied=True), "qwen2": _qwen2}


@pytest.mark.parametrize("name", sorted(BUILD))
@pytest.mark.parametrize("policy", [None, "full"])
def test_count_matches_a_plain_flop_counter_on_a_model_from_disk(tmp_path, seed, name, policy):
    BUILD[name](seed).save_pretrained(tmp_path / "model")
    model = load_model(tmp_path / "model")
    prepare_model(
        model, gradient_checkpointing=policy is not None, checkpointing_policy=policy or "full"
    )
    batch = _batch(seed, VOCAB)
    plan = getattr(model, "rc_checkpointing_plan", None) or []
    want = batch_flops(ModelShape.from_model(model), batch, recompute=recomputed_share(plan))
    with FlopCounterMode(display=False) as counter:
        loss, *_ = ReflectionLossModule(model)(batch, False)
        loss.backward()
    counted = counter.get_total_flops()
    # The model counts norm weights and biases as parameters (6 FLOPs a token each), the counter
    # sees GEMMs alone: 0.3% here.
    assert counted == pytest.approx(want.hardware, rel=0.01), counter.get_flop_counts()
    if policy == "full":
        assert want.hardware > 1.15 * want.model


def test_the_counter_sees_the_cpu_attention():
    """torch 2.13 has no formula for SDPA's CPU flash kernel; ours counts it as torch counts
    the math backend's matmuls: 2 GEMMs forward (q k^T, p v), 4 backward."""
    q, k, v = (torch.randn(1, 4, 50, 16, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert counter.get_total_flops() == 2 * 2 * 4 * 50 * 50 * 16
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 4 * 2 * 4 * 50 * 50 * 16
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        with FlopCounterMode(display=False) as math:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.sum().backward()
    assert math.get_total_flops() == 6 * 2 * 4 * 50 * 50 * 16


def test_the_counter_sees_the_compiled_layers_custom_op(seed):
    """``reflectioncoder::varlen_attention`` (what a compiled layer calls) counts each
    segment's square, its backward twice that, plus the forward again where it reruns it."""
    from reflectioncoder.kernels.varlen_attention_op import kernel_backward, varlen_attention_op

    lens = [30, 70]
    cu = torch.tensor([0, 30, 100], dtype=torch.int32)
    q, k, v = (torch.randn(100, h, 16, requires_grad=True) for h in (4, 2, 2))
    with FlopCounterMode(display=False) as counter:
        out = varlen_attention_op(q, k, v, cu, 70, True, 0.25)
    square = 4 * 16 * sum(n * n for n in lens)
    assert counter.get_total_flops() == 4 * square
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    rerun = not kernel_backward("sdpa", 16)
    assert counter.get_total_flops() == (8 + 4 * rerun) * square


@pytest.mark.parametrize("extra", [(), ("model.gradient_checkpointing=true",)])
def test_a_train_steps_row_is_what_the_counter_sees(tmp_path, seed, extra):
    """``Trainer.train_step`` under a plain counter: the row's hardware FLOPs are what ran
    (the teacher-CE logging pass and checkpointing's recompute included), within 1%."""
    from test_trainer import tiny_config

    from reflectioncoder.train.trainer import Trainer

    cfg = tiny_config(tmp_path, seed, n=12, extra=("packing.max_tokens=300", *extra))
    trainer = Trainer(cfg)
    try:
        for _ in range(2):
            with FlopCounterMode(display=False) as counter:
                row = trainer.train_step()
            assert counter.get_total_flops() == pytest.approx(row["hardware_flops"], rel=0.01)
            assert row["model_flops"] < row["hardware_flops"]
    finally:
        trainer.close()
