"""A tiny random Llama and a tokenizer trained on a few texts, saved as a Hugging Face folder:
what a test gives ``--model`` when it needs a model on disk (generation, evaluation, building
data with a local model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def save_tiny_model(
    out: Path,
    texts: Sequence[str],
    *,
    num_layers: int = 1,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    special_tokens: Sequence[str] = (),
    chat_template: str | None = None,
    seed: int = 0,
    model_type: str = "llama",
    config_fields: Mapping[str, Any] | None = None,
) -> Path:
    """``out`` holding a Llama (or another ``model_type`` taking Llama's size fields:
    ``starcoder2``, ``qwen2``, ...) of random weights (seeded), ``config_fields`` set in its
    config (``{"attention_dropout": 0.1}``), and a byte-level BPE tokenizer of 300 tokens trained
    on ``texts``, plus ``special_tokens`` and a ``chat_template`` when given."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from reflectioncoder.tokenizer import train_tokenizer

    tok = train_tokenizer(list(texts), 300)
    if special_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **(config_fields or {}),
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out
