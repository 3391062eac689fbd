"""moe: the memory plan of a multi-head latent attention model (DeepSeek-V2/V3, so
DeepSeek-Coder-V2) from its real widths: the bytes each checkpointing policy keeps and what
``full`` / ``mlp_rerun`` rerun took the config's head_dim (the rotary part alone, 64) for every
head, where q and k are qk_nope + qk_rope wide (192), v v_head_dim (128), and the projections go
through low ranks (q_lora_rank, kv_lora_rank): DeepSeek-V3's save_gemms attention tensors were
counted 32768 elements a token, 84032 kept. ModelShape carries the widths; checked by hand from a
saved tiny config, and against the heap the CPU holds (as tests/test_planshape_bytes.py)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from reflectioncoder import memory_plan as mp
from reflectioncoder.model import load_model
from reflectioncoder.train.flops import ModelShape

D, MLP, H, LAYERS = 64, 160, 4, 2
Q, C, ROPE, NOPE, V = 24, 16, 4, 8, 6  # q_lora, kv_lora, a head's rotary / other part, values
S = NOPE + ROPE  # a query / key head: 12; the packed attention runs every head P = 12 wide
MLA = dict(
    hidden_size=D, intermediate_size=MLP, num_attention_heads=H, num_key_value_heads=H,
    q_lora_rank=Q, kv_lora_rank=C, qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=V,
)  # fmt: skip


def _dense_v3(layers: int = LAYERS, **sizes) -> tf.DeepseekV3ForCausalLM:
    config = tf.DeepseekV3Config(
        **{"vocab_size": 128, **MLA, **sizes}, num_hidden_layers=layers,
        first_k_dense_replace=layers, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=16, n_group=1, topk_group=1,
    )  # fmt: skip
    return tf.DeepseekV3ForCausalLM(config)


# By hand, elements a token and layer (D, MLP as everywhere; lse: 4 heads' fp32 log-sum-exp):
GEMM_OUTPUTS = Q + H * S + (C + ROPE) + H * (NOPE + V) + H * S  # q_a, q_b, kv_a, kv_b, attention
EVERY = 2 * Q + (C + ROPE) + C + 3 * H * S + H * S + H * V  # low ranks and norms, q/k/v, out, cut
KEPT = {  # elements, lse entries
    "none": (6 * D + EVERY + 4 * MLP, H),
    "save_gemms": (2 * D + GEMM_OUTPUTS + 2 * MLP, H),
    "mlp_rerun": (2 * D + GEMM_OUTPUTS, H),
    "full": (D, 0),
    "offload": (D, 0),
}
# q_a, q_b, kv_a, kv_b, o_proj: the attention's GEMM parameters
ATTENTION = D * Q + Q * H * S + D * (C + ROPE) + C * H * (NOPE + V) + H * V * D


def test_the_plan_takes_a_saved_deepseek_v3s_widths(tmp_path):
    torch.manual_seed(0)
    _dense_v3().save_pretrained(tmp_path)
    model = load_model(tmp_path)
    shape = ModelShape.from_model(model)
    assert (shape.qk_width, shape.v_width) == (H * S, H * V)
    assert (shape.q_lora, shape.kv_lora, shape.rope_dim) == (Q, C, ROPE)
    assert shape.attn_width == H * ROPE  # config.head_dim: the rotary part, what it took
    for policy, (elements, lse) in KEPT.items():
        assert mp.kept_per_token(policy, shape, element_bytes=2) == 2 * elements + 4 * lse
    assert mp.offloaded_bytes(1, shape, element_bytes=4) == 4 * (D + GEMM_OUTPUTS + 2 * MLP) + 4 * H
    attention = model.model.layers[0].self_attn
    assert ATTENTION == sum(p.numel() for p in attention.parameters() if p.dim() > 1)
    assert mp.attention_params(shape) == ATTENTION
    forward = ATTENTION + 3 * D * MLP  # and the MLP: gate, up, down
    cost = mp.rerun_cost(shape)
    assert cost["mlp_rerun"] == pytest.approx(2 * D * MLP / forward)
    assert cost["full"] == pytest.approx((ATTENTION + 2 * D * MLP) / forward)


def test_deepseek_v2_lite_has_one_q_proj():
    """q_lora_rank null (DeepSeek-V2-Lite, DeepSeek-Coder-V2-Lite): q_proj's output alone."""
    shape = ModelShape.from_model(_dense_v3(q_lora_rank=None))
    assert shape.q_lora == 0
    elements = 2 * D + (GEMM_OUTPUTS - Q) + 2 * MLP
    assert mp.kept_per_token("save_gemms", shape, element_bytes=1) == elements + 4 * H
    assert mp.attention_params(shape) == ATTENTION - D * Q - Q * H * S + D * H * S


def test_a_plain_attention_keeps_its_widths():
    shape = ModelShape.llama(D, MLP, LAYERS, H, 2, 128)
    assert (shape.kv_lora, shape.q_lora) == (0, 0)
    elements = 2 * D + 2 * D + 2 * (D // 2) + 2 * MLP  # input, o_proj; q, out; k, v; gate, up
    assert mp.kept_per_token("save_gemms", shape, element_bytes=1) == elements + 4 * H
    assert mp.attention_params(shape) == D * (2 * D + 2 * (D // 2))


def _held(layers: int, policy: str, sizes: dict) -> tuple[int, int, ModelShape]:
    """(heap bytes held after a forward + loss, tokens) of a dense DeepSeek-V3 (fp32, CPU)."""
    from reflectioncoder.testing.heap import held_by_forward

    torch.manual_seed(0)
    return held_by_forward(_dense_v3(layers, vocab_size=512, **sizes), policy, samples=4)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["none", "full", "save_gemms", "mlp_rerun"])
def test_the_plan_is_what_the_cpu_holds(policy):
    """bench/bench_activation_memory.py's measure at a DeepSeek-like shape (S = 48 > V = 32):
    the heap's growth from 2 to 4 layers, per token and layer, against the plan (fp32); ``none``
    with the CPU's per-segment SDPA outputs too (tests/test_planshape_bytes.py's allowance)."""
    sizes = dict(hidden_size=256, intermediate_size=688, q_lora_rank=96, kv_lora_rank=64,
                 qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32)  # fmt: skip
    _held(2, policy, sizes)  # a first forward leaves memory the next ones reuse
    two, tokens, _ = _held(2, policy, sizes)
    four, _, shape = _held(4, policy, sizes)
    measured = (four - two) / (2 * tokens)
    predicted = mp.kept_per_token(policy, shape, element_bytes=4)
    if policy == "none":
        predicted += 4 * max(shape.qk_width, shape.v_width)
    assert abs(predicted - measured) <= max(0.02 * measured, 48), (predicted, measured)
