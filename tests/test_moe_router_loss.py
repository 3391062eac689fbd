"""moe: a mixture-of-experts config that turns on the router's load-balancing loss
(``"output_router_logits": true`` with ``router_aux_loss_coef`` > 0: Mixtral, Qwen2/3-MoE, as
transformers defines them) is refused in one line naming the model folder, the field and the fix,
before the run folder is written. The packed forward and the fused loss compute CE + KL only:
such a model trained silently without the balancing term. With the field false it still starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf

from reflectioncoder.cli import main
from reflectioncoder.model_support import check_supported
from reflectioncoder.testing.cli import train_argv

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"
SIZES = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip
MOE = [
    (tf.MixtralConfig, tf.MixtralForCausalLM, dict(num_local_experts=4, num_experts_per_tok=2)),
    (tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM, dict(num_experts=4, num_experts_per_tok=2)),
    (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM, dict(num_experts=4, num_experts_per_tok=2)),
]


@pytest.mark.parametrize("config_cls, model_cls, experts", MOE)
def test_router_loss_is_refused_naming_the_field(config_cls, model_cls, experts):
    torch.manual_seed(0)
    config = config_cls(**SIZES, **experts, moe_intermediate_size=16, output_router_logits=True)
    with pytest.raises(ValueError, match=r"output_router_logits = true .* set \"output_router"):
        check_supported(model_cls(config))
    config.router_aux_loss_coef = 0.0  # the balancing term adds nothing: the same objective
    check_supported(model_cls(config))
    config.router_aux_loss_coef, config.output_router_logits = 0.02, False
    check_supported(model_cls(config))


def test_a_config_without_a_balancing_loss_still_trains():
    """DeepSeek-V2/V3 record router logits but transformers adds no loss of them: no coefficient."""
    config = tf.DeepseekV3Config(
        **SIZES, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        n_group=1, topk_group=1, kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4,
        qk_nope_head_dim=4, v_head_dim=8, output_router_logits=True,
    )  # fmt: skip
    assert getattr(config, "router_aux_loss_coef", None) is None
    check_supported(tf.DeepseekV3ForCausalLM(config))


def _save_mixtral(folder: Path, output_router_logits: bool) -> Path:
    """A tiny Mixtral beside save_tiny_model's tokenizer, saved as users have it."""
    from reflectioncoder.testing.tiny_model import save_tiny_model

    save_tiny_model(folder, DATA.read_text().splitlines())
    llama = json.loads((folder / "config.json").read_text())
    torch.manual_seed(0)
    config = tf.MixtralConfig(
        **{**SIZES, "vocab_size": llama["vocab_size"]}, num_local_experts=4,
        num_experts_per_tok=2, output_router_logits=output_router_logits,
        router_aux_loss_coef=0.02, bos_token_id=llama["bos_token_id"],
        eos_token_id=llama["eos_token_id"], pad_token_id=llama["pad_token_id"],
    )  # fmt: skip
    tf.MixtralForCausalLM(config).save_pretrained(folder)
    return folder


def test_train_refuses_it_before_writing_the_run_folder(tmp_path, capsys):
    folder = _save_mixtral(tmp_path / "model", output_router_logits=True)
    capsys.readouterr()  # the save's progress bars
    out = tmp_path / "run"
    sets = {"data.files": f"[{DATA}]", "model.name_or_path": folder, "train.max_steps": 1}
    args = train_argv({**sets, "checkpoint.out_dir": out}, "--no-progress")
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(folder) in err[0] and "output_router_logits" in err[0], err
    assert '"output_router_logits": false in config.json' in err[0], err
    assert not out.exists()
