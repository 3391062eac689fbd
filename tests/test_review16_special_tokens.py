"""SPEC §1: "Seven special tokens are added to the tokenizer", as the reference adds them
(``add_special_tokens(additional_special_tokens=...)``): special tokens of the tokenizer, so
``all_special_tokens`` lists them, ``skip_special_tokens`` drops them, and the saved tokenizer
still holds them as special after a reload; each new row starts from the ORIGINAL tokenizer's
split of its string."""

from __future__ import annotations

from reference.serialise import SPECIALS as SEVEN  # SPEC §1's list, written out there
from transformers import AutoTokenizer

from reflectioncoder.data.tokenize import add_special_tokens
from reflectioncoder.tokenizer import train_tokenizer

CORPUS = ["def f(x):\n    return x + 1\n", "Traceback: NameError <|x|>", "the bug is"] * 30


def test_the_seven_are_special_tokens_of_the_tokenizer(tmp_path):
    original = train_tokenizer(CORPUS, vocab_size=300)
    tok = train_tokenizer(CORPUS, vocab_size=300)
    n = len(tok)
    splits = add_special_tokens(tok)
    # SPEC: the split is original_tokenizer.encode(token_string, add_special_tokens=False)
    assert splits == {s: original.encode(s, add_special_tokens=False) for s in SEVEN}
    assert len(tok) == n + 7
    assert set(SEVEN) <= set(tok.all_special_tokens)
    ids = [tok.convert_tokens_to_ids(s) for s in SEVEN]
    assert sorted(ids) == list(range(n, n + 7))
    text = "<|user|><|text|>the bug<|endofblock|><|endofmessage|>"
    encoded = tok.encode(text, add_special_tokens=False)
    assert encoded[:2] == ids[:1] + ids[2:3] and encoded[-2:] == ids[5:7]
    assert tok.decode(encoded, skip_special_tokens=True) == "the bug"

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert set(SEVEN) <= set(again.all_special_tokens)
    assert [again.convert_tokens_to_ids(s) for s in SEVEN] == ids
    # idempotent on the saved tokenizer: nothing added, each token maps to its own id
    assert add_special_tokens(again) == {s: [i] for s, i in zip(SEVEN, ids, strict=True)}
    assert len(again) == n + 7 and again.all_special_tokens.count("<|user|>") == 1


def test_a_tokenizers_own_extra_special_tokens_stay_special():
    tok = train_tokenizer(CORPUS, vocab_size=300)
    tok.add_special_tokens({"extra_special_tokens": ["<|x|>"]})
    add_special_tokens(tok)
    assert {"<|x|>", *SEVEN} <= set(tok.all_special_tokens)
