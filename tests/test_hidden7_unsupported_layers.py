"""hidden7: causal LMs whose layers do not attend through transformers' attention interface are
refused by ``check_supported`` (so in one line, before the run folder is written), naming the
model: StableLM (StableCode) stopped at the first step with 'cu_seq_lens_q and max_length_q are
required', Mamba, Jamba and Qwen3-Next with an internal AttributeError ('... has no attribute
self_attn'; GPT-NeoX, whose attention is its layers' ``attention``, now trains:
reflectioncoder/decoder_layout.py finds it), and Falcon-H1, whose state-space layers run over
the whole packed batch, trained silently on hidden states mixed across samples (1e-2 off each
sample run alone). GPT-OSS, whose attention sinks the varlen attention does not apply, stopped
at the first step ('attention with s_aux is not supported'). The architectures that train keep
training: their packed forward equals each segment run alone."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from test_model import _packed, _per_segment_eager

from reflectioncoder.model import forward_hidden, prepare_model
from reflectioncoder.model_support import check_supported

SIZES = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
)  # fmt: skip


def _model(name: str, **extra):
    torch.manual_seed(0)
    config = getattr(tf, f"{name}Config")(**SIZES, **extra)
    return getattr(tf, f"{name}ForCausalLM")(config)


@pytest.mark.parametrize(
    "name, extra, words",
    [
        ("StableLm", {}, "attention interface"),
        ("FalconH1", {}, "attention interface"),
        ("Mamba", {}, "attention interface"),
        ("Jamba", {}, "attention interface"),
        ("Qwen3Next", {}, "attention interface"),
        ("Lfm2", {"layer_types": ["conv", "full_attention"]}, "has no self-attention module"),
        ("GptOss", {"head_dim": 8, "num_local_experts": 4}, "attention has sinks"),
    ],
)
def test_refused_naming_the_model(name, extra, words):
    with pytest.raises(ValueError, match=rf"^model: {name}ForCausalLM.*{words}"):
        check_supported(_model(name, **extra), max_len=64)


@pytest.mark.parametrize(
    "name", ["Llama", "Qwen2", "Starcoder2", "Mistral", "Qwen3", "Gemma", "GPTNeoX"]
)
def test_supported_ones_train_as_each_segment_alone(seed, name):
    model = _model(name).double()
    check_supported(model, max_len=64)
    model = prepare_model(model)
    batch = _packed([16, 5, 11], 64)
    with torch.no_grad():
        got = forward_hidden(model, batch)
        torch.testing.assert_close(got, _per_segment_eager(model, batch), atol=1e-9, rtol=1e-9)
