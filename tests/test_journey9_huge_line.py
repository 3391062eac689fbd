"""A huge line in a data file (a pasted log, a blob of data) is dropped as over-length without
being tokenised: it was tokenised whole first (a 40 MB line: 125 s on the shared machine, and
its 20M ids in memory), only to be dropped. A text of more UTF-8 bytes than the vocabulary's
longest entry x max_len x 2 has more than max_len ids whatever it holds, so it is listed as
over-length by its size, the other samples load as before, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

from reflectioncoder.data import dataset as dataset_mod
from reflectioncoder.data.config import DataConfig
from reflectioncoder.data.dataset import load_dataset, surely_over_length_bytes
from reflectioncoder.data.tokenize import add_special_tokens, encode_text
from reflectioncoder.tokenizer import train_tokenizer

CORPUS = ["def f(x):\n    return x + 1\n", "AssertionError: got 5", "日本 é    indent"] * 30


def _sample(text: str) -> str:
    turn = [{"type": "text", "content": text}]
    messages = [{"role": "user", "content": turn}, {"role": "assistant", "content": turn}]
    return json.dumps({"type": "generation", "messages": messages}) + "\n"


def _tokenizer(tmp_path: Path):
    tok = train_tokenizer(CORPUS, vocab_size=300)
    add_special_tokens(tok)
    tok.save_pretrained(tmp_path / "tok")
    return AutoTokenizer.from_pretrained(tmp_path / "tok")  # as train reads it, from disk


def test_a_huge_line_is_dropped_untokenised(tmp_path, monkeypatch):
    tok = _tokenizer(tmp_path)
    max_len = 128
    huge = "    return x + 1\n日本 é " * (surely_over_length_bytes(tok, max_len) // 20)
    data = tmp_path / "d.jsonl"
    data.write_text(_sample("add one") + _sample(huge) + _sample("subtract one"))
    seen: list[int] = []
    encode = dataset_mod.encode_texts

    def recording(tokenizer, texts, *args, **kwargs):
        seen.extend(len(t) for t in texts)
        return encode(tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(dataset_mod, "encode_texts", recording)
    samples, report = load_dataset(DataConfig(files=[str(data)], max_len=max_len), tok)
    assert max(seen) < 1000  # the huge text never reached the tokenizer
    size = len(huge.encode())  # the sample's text holds it, with its roles and tokens
    (line,) = report.over_length
    assert line.startswith(f"{data}:2 (") and line.endswith(
        f" bytes of text: over {max_len} ids, not tokenised)"
    )
    assert int(line.split("(")[1].split(" ")[0]) > size
    assert [s.source for s in samples] == [f"{data}:1", f"{data}:3"]
    assert [s.uid for s in samples] == [0, 2]  # the masks each sample draws are unchanged
    assert report.loaded == 3


def test_the_bound_holds_for_the_longest_entry_repeated(tmp_path):
    """The text that packs the most bytes in each id: the longest entry, over and over."""
    tok = _tokenizer(tmp_path)
    max_len = 16
    bound = surely_over_length_bytes(tok, max_len)
    longest = max(tok.get_vocab(), key=lambda e: len(e.encode()))
    piece = tok.convert_tokens_to_string([longest])
    text = piece * (bound // max(len(piece.encode()), 1) + 1)
    assert len(text.encode()) > bound
    assert len(encode_text(tok, text)) > max_len


def test_the_summary_names_no_max_len_that_would_keep_a_huge_line(tmp_path):
    """'up to N ids' says that a max_len of N keeps every dropped sample: not so for a huge
    text, whose ids were never counted."""
    tok = _tokenizer(tmp_path)
    max_len = 64
    longer = "def f(x):\n    return x + 1\n" * 8  # over 64 ids, tokenised and counted
    huge = "AssertionError: got 5\n" * (surely_over_length_bytes(tok, max_len) // 10)
    data = tmp_path / "d.jsonl"
    data.write_text(_sample("add one") + _sample(longer) + _sample(huge))
    _, report = load_dataset(DataConfig(files=[str(data)], max_len=max_len), tok)
    counted, uncounted = report.over_length
    assert counted.startswith(f"{data}:2 (") and counted.endswith(" ids)")
    assert uncounted.endswith("not tokenised)")
    assert "up to" not in report.summary(max_len)
    data.write_text(_sample("add one") + _sample(longer))
    _, report = load_dataset(DataConfig(files=[str(data)], max_len=max_len), tok)
    assert " (up to " in report.summary(max_len)  # counted alone: the count is said
