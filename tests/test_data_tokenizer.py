"""The local byte-level BPE tokenizer."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from reflectioncoder.tokenizer import train_tokenizer

TEXTS = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n"] * 40


def test_train_save_reload_roundtrip(tmp_path, seed):
    tok = train_tokenizer(TEXTS, vocab_size=320, out_dir=tmp_path / "tok")
    assert {tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token} == {
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    }
    assert len(tok) <= 320
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    rng = random.Random(seed)
    # Byte-level: any text round-trips, even characters never seen in training.
    text = "".join(rng.choice("abc xyz\n\t(){}é日本🙂") for _ in range(50))
    ids = again.encode(text, add_special_tokens=False)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert again.decode(ids) == text
    assert again.encode(text)[0] == again.bos_token_id  # add_special_tokens prepends BOS
    assert again.unk_token_id not in ids


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size: must be an int >= 260"):
        train_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="texts: expected an iterable of strings"):
        train_tokenizer("one string", vocab_size=300)
