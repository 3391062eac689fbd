"""A model whose tokenizer has no BOS token (Qwen2 and Qwen2.5-Coder ship ``bos_token: null``)
trains: every sequence starts at its first role token, as that model's evaluation prompt does
(``eval.prompts.bos_text`` adds no BOS there). Training refused such a folder outright with
'tokenizer: needs both a bos_token and an eos_token', though Qwen2 is one of the architectures
issue 4 names. A tokenizer with no EOS is still refused: EOS ends every sequence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference.serialise import SPECIALS

from reflectioncoder.cli import main
from reflectioncoder.data.tokenize import encode_text
from reflectioncoder.eval.prompts import bos_text

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"


@pytest.fixture(scope="module")
def qwen_without_bos(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from reflectioncoder.testing.tiny_model import save_tiny_model

    out = tmp_path_factory.mktemp("qwen")
    save_tiny_model(out, DATA.read_text().splitlines() * 4)
    tok = AutoTokenizer.from_pretrained(out)
    tok.bos_token = None  # as Qwen2's tokenizer_config.json: "bos_token": null
    tok.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.bos_token_id is None and tok.eos_token_id is not None
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


def test_a_sequence_without_bos_starts_at_its_role_token(qwen_without_bos):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_without_bos)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS)})
    ids = encode_text(tok, "<|user|><|text|>hi<|endofblock|><|endofmessage|>")
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert ids[-1] == tok.eos_token_id
    assert bos_text(tok) == ""  # the evaluation prompt starts the same way


def test_a_tokenizer_without_eos_is_refused(qwen_without_bos):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_without_bos)
    tok.eos_token = None
    with pytest.raises(ValueError, match="tokenizer: needs an eos_token"):
        encode_text(tok, "<|user|>")


def test_train_and_inspect_a_model_without_bos(qwen_without_bos, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--set", f"data.files=[{DATA}]", "--no-progress",
            "--set", f"model.name_or_path={qwen_without_bos}", "--set", "train.max_steps=2",
            "--set", f"checkpoint.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    views = tmp_path / "views.json"
    args = ["inspect", "--data", str(DATA), "--tokenizer", str(out / "final"), "--json",
            str(views), "--no-progress", "--step", "1", "--total-steps", "2"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "final")
    for view in json.loads(views.read_text()):
        assert view["input_ids"][0] == tok.convert_tokens_to_ids("<|user|>")
        assert view["input_ids"][-1] == tok.eos_token_id
        assert view["labels"][0] == -100
        if view["student_positions"]:  # the first instruction stays hidden from the student
            assert view["student_positions"][0] > view["input_ids"].index(
                tok.convert_tokens_to_ids("<|assistant|>")
            )
