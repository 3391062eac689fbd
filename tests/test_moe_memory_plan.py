"""moe: the memory plan of a mixture of experts keeps what its MoE layers keep: the plan counted
a dense MLP of ``intermediate_size`` in every layer (gate and up: 2 I a token under save_gemms),
where a MoE layer keeps its router's logits and, for each of the top-k experts a token runs
through, the expert's gate / up and down outputs (the router's weight multiplies the latter),
plus its shared experts' (ModelShape.experts; memory_plan._mlp). On the CPU's heap the plan was
37% short under save_gemms and 41% under none for a Mixtral shape. By hand from saved tiny
configs; against the heap (slow), differenced over two token counts and two depths."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers as tf

from reflectioncoder import memory_plan as mp
from reflectioncoder.model import load_model
from reflectioncoder.train.flops import ExpertShape, ModelShape

D, E, K = 32, 4, 2
SIZES = dict(vocab_size=64, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
MLA = dict(kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)
CASES = {  # config, model, its experts' fields
    "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM, dict(num_local_experts=E)),
    "qwen2_moe": (
        tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM,
        dict(num_experts=E, moe_intermediate_size=16, shared_expert_intermediate_size=24),
    ),
    "deepseek_v3": (
        tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM,
        dict(n_routed_experts=E, moe_intermediate_size=16, first_k_dense_replace=1, n_group=1,
             topk_group=1, n_shared_experts=1, **MLA),
    ),
}  # fmt: skip
# By hand, a MoE layer's elements a token (the router's E logits; each of the K experts' gate
# and up (2 I_e) and down (D) outputs; shared experts' gate and up (2 I_s), and where a gate
# multiplies them their down output and the gate's (D + 1)); ``none`` also the probabilities,
# each routed token's input, the experts' activation and product, and 6 int64 a routed pair.
HAND = {  # name: (ExpertShape, save_gemms' MLP elements, none's, none's int64 bytes), a layer
    "mixtral": (ExpertShape(2, E, K, 64), E + K * (2 * 64 + D), 2 * E + K * (2 * D + 4 * 64)),
    "qwen2_moe": (
        ExpertShape(2, E, K, 16, 24, True),
        E + K * (2 * 16 + D) + 2 * 24 + D + 1,
        2 * E + K * (2 * D + 4 * 16) + 4 * 24 + D + 2,
    ),
    "deepseek_v3": (  # layer 0 dense (I = 64: 2 I, 4 I), layer 1 MoE: the layers' mean
        ExpertShape(1, E, K, 16, 16),
        (2 * 64 + E + K * (2 * 16 + D) + 2 * 16) / 2,
        (4 * 64 + 2 * E + K * (2 * D + 4 * 16) + 4 * 16) / 2,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_a_moe_layer_keeps_what_a_hand_count_says(name, tmp_path):
    config_cls, model_cls, experts = CASES[name]
    torch.manual_seed(0)
    model_cls(config_cls(**SIZES, **experts, num_experts_per_tok=K)).save_pretrained(tmp_path)
    shape = ModelShape.from_model(load_model(tmp_path))
    moe, save_gemms, none = HAND[name]
    assert shape.experts == moe
    without = dataclasses.replace(shape, experts=None, intermediate=0)  # all but the MLPs
    index_bytes = 48 * K * moe.layers / 2

    def mlp(policy: str) -> float:
        return mp.kept_per_token(policy, shape, 1) - mp.kept_per_token(policy, without, 1)

    assert mlp("save_gemms") == pytest.approx(save_gemms)
    assert mlp("none") == pytest.approx(none + index_bytes)
    assert mlp("mlp_rerun") == mlp("full") == 0  # nothing of the MLP kept: it runs again
    sent = mp.offloaded_bytes(1, shape, 1) - mp.offloaded_bytes(1, without, 1)
    assert sent == pytest.approx(save_gemms)
    # what full reruns of a layer's GEMMs: all of a Mixtral's (no last GEMM left out but the
    # final norm's D / layers), all but the down projections that end its layers otherwise
    cost = mp.rerun_cost(shape)
    if name == "mixtral":
        assert cost["full"] == pytest.approx(1.0, abs=2e-3)
    else:
        assert 0.5 < cost["full"] < 1.0


def test_a_dense_model_has_no_experts():
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SIZES))
    assert ModelShape.from_model(model).experts is None


HEAP_SIZES = dict(vocab_size=512, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
HEAP_CASES = {
    "mixtral": lambda n: tf.MixtralForCausalLM(tf.MixtralConfig(
        **HEAP_SIZES, num_hidden_layers=n, intermediate_size=256, num_local_experts=4,
        num_experts_per_tok=2)),
    "qwen2_moe": lambda n: tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(
        **HEAP_SIZES, num_hidden_layers=n, intermediate_size=688, moe_intermediate_size=256,
        shared_expert_intermediate_size=384, num_experts=4, num_experts_per_tok=2)),
    "deepseek_v3": lambda n: tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(
        **HEAP_SIZES, num_hidden_layers=n, intermediate_size=688, moe_intermediate_size=256,
        n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=0,
        n_group=1, topk_group=1, kv_lora_rank=64, q_lora_rank=96, qk_rope_head_dim=16,
        qk_nope_head_dim=32, v_head_dim=32)),
}  # fmt: skip


def _held(name: str, layers: int, policy: str, samples: int) -> tuple[int, int, ModelShape]:
    """(heap bytes held after a forward + loss, tokens, shape), fp32 on the CPU."""
    from reflectioncoder.testing.heap import held_by_forward

    torch.manual_seed(0)
    return held_by_forward(HEAP_CASES[name](layers), policy, samples)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["none", "save_gemms"])
@pytest.mark.parametrize("name", HEAP_CASES)
def test_the_plan_is_what_the_cpu_holds(name, policy):
    """The heap's growth from 2 to 4 layers, at 2 and at 5 samples (a layer's fixed bytes
    cancel), per token and layer, against the plan within 1%; ``none`` with the CPU's
    per-segment SDPA outputs too (tests/test_planshape_bytes.py's allowance)."""
    _held(name, 2, policy, 2)  # a first forward leaves memory the next ones reuse
    few = [_held(name, layers, policy, 2) for layers in (2, 4)]
    many = [_held(name, layers, policy, 5) for layers in (2, 4)]
    grown = (many[1][0] - many[0][0]) - (few[1][0] - few[0][0])
    measured = grown / (2 * (many[0][1] - few[0][1]))
    shape = many[1][2]
    predicted = mp.kept_per_token(policy, shape, element_bytes=4)
    if policy == "none":
        predicted += 4 * (max(shape.qk_width, shape.v_width) if shape.kv_lora else shape.attn_width)
    assert predicted == pytest.approx(measured, rel=0.01), (predicted, measured)
