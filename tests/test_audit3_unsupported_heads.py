"""Models that change their logits after the LM head's GEMM (Granite divides by
``logits_scaling``, Cohere multiplies by ``logit_scale``, Gemma 2 soft-caps them) or soft-cap
their attention scores trained silently on the wrong loss: packed training computed logits as
W h (the fused loss) and attention without soft-capping. Such a model was refused in one line
naming the config field, before the run folder is written; the plain values train. (A head
that only multiplies its logits by a constant, Granite's and Cohere's, now trains with it:
tests/test_heads_logit_scale.py; Gemma 2's soft caps are applied: tests/test_heads_softcap.py.
A scale on a type whose meaning is unknown, or a cap that is not a number > 0, is refused.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf

from reflectioncoder.cli import main
from reflectioncoder.model_support import check_supported
from reflectioncoder.packed_attention import _varlen_attention_forward

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"
SIZES = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip

REFUSED = {
    "llama with a logit scale": (
        tf.LlamaConfig, tf.LlamaForCausalLM, {"logit_scale": 2.0}, "logit_scale",
    ),
    "gemma2 with a zero cap": (
        tf.Gemma2Config, tf.Gemma2ForCausalLM,
        {"head_dim": 8, "final_logit_softcapping": 0.0}, "final_logit_softcapping",
    ),
}  # fmt: skip


def _model(config_cls, model_cls, extra):
    torch.manual_seed(0)
    return model_cls(config_cls(**SIZES, **extra))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_model_with_a_rescaled_or_capped_head_is_refused(name):
    config_cls, model_cls, extra, field = REFUSED[name]
    with pytest.raises(ValueError, match=rf"^model: {config_cls.__name__}\.{field} = "):
        check_supported(_model(config_cls, model_cls, extra))


def test_the_plain_values_are_supported():
    check_supported(_model(tf.GraniteConfig, tf.GraniteForCausalLM, {"logits_scaling": 1.0}))
    check_supported(_model(tf.LlamaConfig, tf.LlamaForCausalLM, {}))


def test_the_granite_head_is_not_w_h():
    """Why: its logits are W h / logits_scaling, not the W h the fused loss computes."""
    model = _model(tf.GraniteConfig, tf.GraniteForCausalLM, {"logits_scaling": 4.0}).eval()
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(model(input_ids=ids).logits, model.lm_head(hidden) / 4.0)


def test_train_refuses_it_before_writing_the_run_folder(tmp_path, capsys):
    from transformers import AutoTokenizer

    from reflectioncoder.testing.tiny_model import save_tiny_model

    folder = save_tiny_model(tmp_path / "llama", DATA.read_text().splitlines())
    tok = AutoTokenizer.from_pretrained(folder)
    gemma2 = tmp_path / "gemma2"
    tok.save_pretrained(gemma2)
    sizes = dict(SIZES, vocab_size=len(tok), head_dim=8)
    tf.Gemma2ForCausalLM(tf.Gemma2Config(**sizes, attn_logit_softcapping=0.0)).save_pretrained(
        gemma2
    )
    capsys.readouterr()  # the saves' progress bars
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--set", f"data.files=[{DATA}]", "--no-progress",
            "--set", f"model.name_or_path={gemma2}",
            "--set", f"checkpoint.out_dir={out}"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Gemma2Config.attn_logit_softcapping = 0.0" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("kwarg", ["s_aux", "sinks"])  # softcap is applied (softcap tests)
def test_attention_arguments_it_cannot_apply_are_refused(kwarg):
    q = torch.zeros(1, 2, 3, 4)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match=f"attention with '{kwarg}' is not supported"):
        _varlen_attention_forward(
            torch.nn.Module(), q, q, q, None, cu_seq_lens_q=cu, max_length_q=3,
            **{kwarg: torch.ones(2) if kwarg != "softcap" else 50.0},
        )  # fmt: skip


# Sliding windows (StarCoder2, Mistral-7B-v0.1: 4096) and other layouts. A window no sequence of
# the run is longer than never binds: such a model trains (it was refused at its first step, with
# its run folder already written, which then blocked a relaunch); one that binds is refused
# before anything is written. A biased head (Phi) and a layout without `layers` (GPTBigCode,
# StarCoder 1) were refused at the first step too, or were an internal AttributeError.


def _starcoder2(window: int):
    torch.manual_seed(0)
    config = tf.Starcoder2Config(**SIZES, sliding_window=window)
    return tf.Starcoder2ForCausalLM(config).double()


def test_a_window_that_never_binds_trains_exactly():
    from test_model import _packed, _per_segment_eager

    from reflectioncoder.model import forward_hidden, prepare_model

    model = prepare_model(_starcoder2(window=16))
    check_supported(model, max_len=16)
    batch = _packed([16, 5, 11], SIZES["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(
            forward_hidden(model, batch), _per_segment_eager(model, batch), atol=1e-10, rtol=1e-10
        )
        with pytest.raises(ValueError, match="sliding-window attention is not supported"):
            forward_hidden(model, _packed([17, 5], SIZES["vocab_size"]))


def test_a_window_that_binds_is_refused_by_name():
    with pytest.raises(ValueError, match=r"Starcoder2Config\.sliding_window = 16 is shorter than "):
        check_supported(_starcoder2(window=16), max_len=17)
    check_supported(_starcoder2(window=16), max_len=16)


def test_a_layout_without_decoder_layers_is_refused_by_name():
    """GPT-2's layout (``transformer.h``) trains now (tests/test_gpt2_layout.py); a stack whose
    layers are not transformers' decoder layers is still refused in one line."""
    model = tf.GPTBigCodeForCausalLM(
        tf.GPTBigCodeConfig(vocab_size=64, n_embd=32, n_layer=1, n_head=4, attn_pdrop=0.0)
    )
    model.transformer.h = torch.nn.ModuleList([torch.nn.Linear(32, 32)])
    with pytest.raises(ValueError, match="^model: GPTBigCodeModel keeps no list of decoder layers"):
        check_supported(model)
