"""hidden7: models with multi-head latent attention (DeepSeek-V2 / V3, so DeepSeek-Coder-V2),
whose values have another head size than queries and keys, train packed. They passed the
start's checks, wrote the run folder, then stopped at the first step with 'k, v: expected equal
shapes (T, Hkv, Dh), got (32, 4, 16) and (32, 4, 4)': the varlen kernels take one head size.
The packed attention now pads to one head size with zero columns (exact) and cuts the output
back; the packed forward and its gradients equal each segment run alone with eager attention,
in float64, values smaller than keys or larger."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf
from test_model import _packed, _per_segment_eager

from reflectioncoder.cli import main
from reflectioncoder.model import forward_hidden, prepare_model
from reflectioncoder.model_support import check_supported

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"


def _mla(name: str, v_head_dim: int, vocab: int = 64, dense_layers: int = 2):
    config = getattr(tf, f"{name}Config")(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
        kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=v_head_dim,
        n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=dense_layers,
        n_group=1, topk_group=1, max_position_embeddings=512,
    )  # fmt: skip
    return getattr(tf, f"{name}ForCausalLM")(config)


@pytest.mark.parametrize(
    "name, v_head_dim", [("DeepseekV3", 4), ("DeepseekV2", 4), ("DeepseekV3", 24)]
)
def test_packed_forward_and_gradients_equal_each_segment_alone(seed, name, v_head_dim):
    # float64, every layer dense: the experts' grouped GEMM takes no float64
    model = prepare_model(_mla(name, v_head_dim).double())
    check_supported(model, max_len=64)
    batch = _packed([16, 5, 11], 64)
    weights = torch.randn(32, 32, dtype=torch.float64)
    got = forward_hidden(model, batch)
    (got * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    want = _per_segment_eager(model, batch)
    (want * weights).sum().backward()
    # DeepSeek-V2 rotates q and k in complex64 (fp32) inside the float64 model: rounding of
    # ~1e-8 that depends on where a token sits in the batch; a wrong head size is off by O(1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.slow
def test_train_runs_a_deepseek_v3_folder(tmp_path, capsys):
    """Through the CLI, a DeepSeek-V3 folder with a mixture-of-experts layer (fp32): the run ends
    and its model loads with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reflectioncoder.testing.tiny_model import save_tiny_model

    folder = save_tiny_model(tmp_path / "llama", DATA.read_text().splitlines())
    tok = AutoTokenizer.from_pretrained(folder)
    mla = tmp_path / "deepseek"
    tok.save_pretrained(mla)
    torch.manual_seed(0)
    model = _mla("DeepseekV3", 4, vocab=len(tok), dense_layers=1)
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.save_pretrained(mla)
    capsys.readouterr()
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--set", f"data.files=[{DATA}]", "--no-progress",
            "--set", f"model.name_or_path={mla}", "--set", "train.max_steps=2",
            "--set", "logging.report_to=[none]", "--set", f"checkpoint.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    assert type(trained).__name__ == "DeepseekV3ForCausalLM"
    assert all(torch.isfinite(p).all() for p in trained.parameters())
