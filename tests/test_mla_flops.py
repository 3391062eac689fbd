"""mlaflops: the FLOP count (MFU / HFU) of multi-head latent attention (DeepSeek-V2 / V3, so
DeepSeek-Coder-V2) took the attention square at config.head_dim, which there is the rotary part
alone (64), while QK^T runs over qk_nope_head_dim + qk_rope_head_dim (192) a head and PV over
v_head_dim (128): the attention term read ~2.5x too low. QK^T now counts at the query / key
width and PV at the value width; a model of equal widths counts as before."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from reflectioncoder.model import load_model
from reflectioncoder.train.flops import ModelShape, Recompute, packed_flops

HEADS, LAYERS, NOPE, ROPE, V = 4, 2, 12, 4, 24  # all three head sizes differ
SEGMENTS, ONE = [8, 8, 16], [32]  # the same 32 tokens: only the attention term differs


def _deepseek_v3_from_disk(tmp_path):
    torch.manual_seed(0)
    config = tf.DeepseekV3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        q_lora_rank=8, kv_lora_rank=16, qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE,
        v_head_dim=V, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1,
        n_group=1, topk_group=1, max_position_embeddings=512,
    )  # fmt: skip
    tf.DeepseekV3ForCausalLM(config).save_pretrained(tmp_path)
    return load_model(tmp_path)


def _attention_term(shape, recompute):
    """What one packing of 32 tokens costs over another: the attention square alone."""
    one, many = (packed_flops(shape, lens, 5, recompute) for lens in (ONE, SEGMENTS))
    return one.model - many.model, one.hardware - many.hardware


def _by_hand(qk: int, v: int) -> float:
    """QK^T: 2 x L x L x qk a head, PV: 2 x L x L x v, the backward twice the forward."""
    squares = sum(n * n for n in ONE) - sum(n * n for n in SEGMENTS)
    return 3 * LAYERS * HEADS * (2 * qk + 2 * v) * squares


def test_latent_attention_counts_queries_keys_and_values_at_their_widths(tmp_path):
    model = _deepseek_v3_from_disk(tmp_path)
    shape = ModelShape.from_model(model)
    assert model.config.head_dim == ROPE  # the width the count took before
    model_term, hardware_term = _attention_term(shape, Recompute(layers=1.0))
    assert model_term == _by_hand(NOPE + ROPE, V)
    # checkpointing's rerun of every layer: one more forward of QK^T and PV
    assert hardware_term - model_term == _by_hand(NOPE + ROPE, V) / 3
    # the low-rank projections (q_a / q_b, kv_a / kv_b) are parameters the count reads whole
    attention = sum(p.numel() for layer in model.model.layers for p in layer.self_attn.parameters())
    assert attention > 0 and shape.body_params >= attention


@pytest.mark.parametrize(
    "config",
    [
        tf.LlamaConfig(hidden_size=48, num_attention_heads=HEADS, num_key_value_heads=2),
        tf.Qwen2Config(hidden_size=48, num_attention_heads=HEADS, num_key_value_heads=2),
    ],
    ids=["llama", "qwen2"],
)
def test_equal_widths_count_as_before(config):
    config.update(dict(vocab_size=64, intermediate_size=64, num_hidden_layers=LAYERS))
    shape = ModelShape.from_model(tf.AutoModelForCausalLM.from_config(config))
    assert shape.score_width == shape.value_width == shape.attn_width == 48
    model_term, hardware_term = _attention_term(shape, 1.0)
    squares = sum(n * n for n in ONE) - sum(n * n for n in SEGMENTS)
    assert model_term == 12 * LAYERS * 48 * squares  # the count before this fix
    assert hardware_term - model_term == 4 * LAYERS * 48 * squares
