"""reflectioncoder.model: loading, special-token mean init, packed forward, LM head."""

from __future__ import annotations

import random
import types

import pytest
import torch
from reference.recipe import REFERENCE_ATTN
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from reflectioncoder.activation_checkpointing import checkpointing_on
from reflectioncoder.data.tokenize import SPECIAL_TOKENS, add_special_tokens
from reflectioncoder.model import (
    add_special_token_embeddings,
    build_tiny_llama,
    count_parameters,
    forward_hidden,
    lm_head_weight,
    load_model,
    prepare_model,
)
from reflectioncoder.packed_attention import ATTN_IMPLEMENTATION
from reflectioncoder.tokenizer import train_tokenizer

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "Write a function that reverses a list. The bug is an off-by-one error.",
    "Traceback (most recent call last):\n  File \"x.py\", line 1\nNameError: name 'y'",
    "print(sorted([3, 1, 2]))  # user assistant text code execution end of block message",
] * 8


def _packed(seqlens: list[int], vocab: int, gapped: bool = True) -> types.SimpleNamespace:
    ids = torch.randint(0, vocab, (sum(seqlens),))
    pos = []
    for n in seqlens:
        p = torch.arange(n)
        if gapped and n > 2:  # student-like: original positions with a gap
            p[n // 2 :] += 3
        pos.append(p)
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(seqlens).cumsum(0)
    return types.SimpleNamespace(
        input_ids=ids,
        position_ids=torch.cat(pos),
        cu_seqlens=cu,
        max_seqlen=max(seqlens),
    )


def _per_segment_eager(model, batch) -> torch.Tensor:
    """Each segment run on its own with float64 eager causal attention: (T, D)."""
    model.set_attn_implementation(REFERENCE_ATTN)
    outs = []
    cu = batch.cu_seqlens.tolist()
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        out = model.base_model(
            input_ids=batch.input_ids[None, a:b], position_ids=batch.position_ids[None, a:b]
        )
        outs.append(out.last_hidden_state[0])
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return torch.cat(outs)


def _tiny_qwen2(vocab: int, tie: bool) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
    )
    return Qwen2ForCausalLM(cfg)


def _tiny_llama_hf(vocab: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen2_tied"])
def test_load_roundtrip_and_packed_forward(tmp_path, seed: int, arch: str) -> None:
    vocab = 97
    model = _tiny_llama_hf(vocab) if arch == "llama" else _tiny_qwen2(vocab, arch == "qwen2_tied")
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, dtype=torch.float64)
    assert loaded.config._attn_implementation == ATTN_IMPLEMENTATION
    assert loaded.config.model_type == arch.split("_")[0]
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(p.double(), q, atol=0, rtol=0, msg=name)
    # Packed forward == each sequence on its own, eager float64 attention (gapped positions).
    rng = random.Random(seed)
    batch = _packed([rng.randint(1, 9), 1, rng.randint(10, 23), rng.randint(2, 7)], vocab)
    with torch.no_grad():
        hidden = forward_hidden(loaded, batch)
        ref = _per_segment_eager(loaded, batch)
    assert hidden.shape == (batch.input_ids.numel(), loaded.config.hidden_size)
    torch.testing.assert_close(hidden, ref, atol=1e-10, rtol=1e-10)
    head = lm_head_weight(loaded)
    assert head.shape == (vocab, loaded.config.hidden_size)
    if arch == "qwen2_tied":
        assert head is loaded.get_input_embeddings().weight


def test_load_model_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="path"):
        load_model(tmp_path / "missing")


def test_forward_hidden_needs_varlen_attention(seed: int) -> None:
    model = build_tiny_llama(50, hidden_size=32, num_layers=1, seed=seed)
    batch = _packed([3, 4], 50)
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match=ATTN_IMPLEMENTATION):
        forward_hidden(model, batch)
    prepare_model(model)
    assert forward_hidden(model, batch).shape == (7, 32)
    bad = types.SimpleNamespace(**{**vars(batch), "position_ids": batch.position_ids[:-1]})
    with pytest.raises(ValueError, match="position_ids"):
        forward_hidden(model, bad)
    with pytest.raises(ValueError, match="liger"):
        prepare_model(model, liger=True)  # Liger needs CUDA


def test_gradient_checkpointing_same_gradients(seed: int) -> None:
    model = build_tiny_llama(61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    model.double().train()
    batch = _packed([5, 1, 12], 61)
    grad = torch.randn(18, 32, dtype=torch.float64)
    grads = []
    for ckpt in (False, True):
        prepare_model(model, gradient_checkpointing=ckpt)
        model.zero_grad()
        forward_hidden(model, batch, seqlens=[5, 1, 12]).backward(grad)
        grads.append([p.grad.clone() for p in model.base_model.parameters()])
    assert checkpointing_on(model)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("tied", [False, True])
def test_special_tokens_mean_init(seed: int, tied: bool) -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300)
    n_orig = len(tok)
    splits = add_special_tokens(tok)
    assert len(tok) == n_orig + len(SPECIAL_TOKENS)
    model = build_tiny_llama(n_orig, hidden_size=32, num_layers=1, tie_word_embeddings=tied)
    emb_before = model.get_input_embeddings().weight.detach().double().clone()
    head_before = lm_head_weight(model).detach().double().clone()
    touched: list[list[torch.nn.Parameter]] = []

    def gather(params):  # records what would be gathered under ZeRO-3
        touched.append(list(params))
        return torch.no_grad()

    ids = add_special_token_embeddings(model, tok, splits, gather_for_update=gather)
    emb = model.get_input_embeddings().weight.double()
    head = lm_head_weight(model).double()
    assert emb.shape[0] == len(tok) and head.shape[0] == len(tok)
    assert len(touched) == 1 and len(touched[0]) == (1 if tied else 2)
    for token, split in splits.items():
        assert len(split) > 1  # the original tokenizer splits each token string
        torch.testing.assert_close(emb[ids[token]], emb_before[split].mean(0), atol=1e-6, rtol=0)
        torch.testing.assert_close(head[ids[token]], head_before[split].mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(emb[:n_orig], emb_before, atol=0, rtol=0)
    assert count_parameters(model) == sum(
        p.numel() for n, p in model.named_parameters(remove_duplicate=True)
    )


def test_special_tokens_errors(seed: int) -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = build_tiny_llama(len(tok), hidden_size=32, num_layers=1)
    splits = {SPECIAL_TOKENS[0]: [5, 6]}
    with pytest.raises(ValueError, match="lacks token"):
        add_special_token_embeddings(model, tok, splits)
    add_special_tokens(tok)
    with pytest.raises(ValueError, match="outside"):
        add_special_token_embeddings(model, tok, {SPECIAL_TOKENS[0]: [10_000]})
    with pytest.raises(ValueError, match="empty split"):
        add_special_token_embeddings(model, tok, {SPECIAL_TOKENS[0]: []})


def test_build_tiny_llama_validates() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        build_tiny_llama(10, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_llama(0)
    a = build_tiny_llama(40, hidden_size=16, num_layers=1, seed=3)
    b = build_tiny_llama(40, hidden_size=16, num_layers=1, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_reflection_loss_checks_hidden(seed: int) -> None:
    from reflectioncoder.loss import reflection_loss

    batch = types.SimpleNamespace(
        loss_rows=torch.tensor([0, 2]),
        targets=torch.tensor([3, 4]),
        ce_weight=torch.tensor([0.5, 0.5]),
        kl_pairs=torch.tensor([[0, 1]]),
        kl_weight=torch.tensor([1.0]),
    )
    weight = torch.randn(11, 8)
    with pytest.raises(ValueError, match="hidden"):
        reflection_loss(torch.randn(3, 7), batch, weight)
    hidden = torch.randn(3, 8, dtype=torch.float64)
    loss, parts = reflection_loss(hidden.float(), batch, weight, backend="torch")
    # Only rows 0 and 2 count: CE of both plus KL(row 0 || row 2), in float64.
    z = hidden[[0, 2]] @ weight.double().T
    ce = 0.5 * (torch.logsumexp(z, -1) - z[[0, 1], [3, 4]]).sum()
    kl = (z[0].softmax(-1) * (z[0].log_softmax(-1) - z[1].log_softmax(-1))).sum()
    torch.testing.assert_close(loss.double(), ce + kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts["ce"].double(), ce, atol=1e-5, rtol=1e-5)


def test_varlen_attention_rejects_masks_and_sliding_window(seed: int) -> None:
    cfg = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=0,
    )
    model = prepare_model(Qwen2ForCausalLM(cfg))
    with pytest.raises(ValueError, match="sliding-window"):  # a segment longer than the window
        forward_hidden(model, _packed([3, 6], 40))
    llama = build_tiny_llama(40, hidden_size=32, num_layers=1)
    batch = _packed([3, 4], 40)
    with pytest.raises(ValueError, match="attention_mask"):
        llama.base_model(
            input_ids=batch.input_ids[None],
            attention_mask=torch.ones(1, 1, 7, 7, dtype=torch.bool),
            cu_seq_lens_q=batch.cu_seqlens,
            max_length_q=7,
        )


def test_special_tokens_under_simulated_zero3(seed: int) -> None:
    """Partitioned weights (empty local tensors, ds_shape) are edited only inside the gather,
    and a padded vocabulary (model rows > len(tokenizer)) is kept, not shrunk."""
    tok = train_tokenizer(TEXTS, vocab_size=300)
    splits = add_special_tokens(tok)
    rows = len(tok) + 9  # padded vocabulary, as many checkpoints have
    model = build_tiny_llama(rows, hidden_size=16, num_layers=1)
    tables = [model.get_input_embeddings().weight, lm_head_weight(model)]
    full = [t.detach().clone() for t in tables]
    for t in tables:  # partition: what ZeRO-3 leaves on a rank
        t.ds_shape = t.shape
        t.data = torch.empty(0)

    class Gather:
        def __init__(self, params):
            self.params = params

        def __enter__(self):
            for p, whole in zip(self.params, full, strict=True):
                p.data = whole.clone()

        def __exit__(self, *exc):
            for k, p in enumerate(self.params):
                full[k] = p.data.clone()
                p.data = torch.empty(0)

    ids = add_special_token_embeddings(model, tok, splits, gather_for_update=Gather)
    emb, head = full
    assert emb.shape[0] == rows and head.shape[0] == rows
    for token, split in splits.items():  # split rows are original ids, left untouched
        torch.testing.assert_close(emb[ids[token]], emb[split].mean(0), atol=1e-6, rtol=0)
        torch.testing.assert_close(head[ids[token]], head[split].mean(0), atol=1e-6, rtol=0)
