"""The tiny preset trains on all of what the demo and README's `build-data` write: its max_len
was 1024 ids, which dropped the longest reflections (17 of the demo's 240 samples with the demo's
1024-token tokenizer; more with the preset's own 512-token one, README's route), so the demo
threw away its own data. The drop is still said in one line when it happens
(tests/test_journey_logs.py), with the longest sample's length: the max_len that keeps them."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main as cli_main
from reflectioncoder.config_presets import PRESETS
from reflectioncoder.data.config import DataConfig
from reflectioncoder.data.dataset import DataReport, load_dataset
from reflectioncoder.data.schema import load_files
from reflectioncoder.data.tokenize import add_special_tokens
from reflectioncoder.tokenizer import train_tokenizer


@pytest.mark.slow  # builds the demo's 240 samples in the sandbox: about 40 s
def test_the_tiny_preset_keeps_every_sample_the_demo_builds(tmp_path):
    data = tmp_path / "reflection.jsonl"
    argv = ["build-data", "--n", "240", "--seed", "0", "--out", str(data), "--no-progress"]
    assert cli_main(argv) == 0  # the demo's defaults (python -m reflectioncoder.demo)
    tiny = PRESETS["tiny"]()
    raw, _ = load_files([str(data)], None, False)
    texts = [b.content for s in raw for m in s.messages for b in m.blocks]  # as the trainer
    longest = 0
    for vocab in (tiny["model"]["tokenizer_vocab_size"], 1024):  # README's route; the demo's
        tokenizer = train_tokenizer(texts, vocab)
        add_special_tokens(tokenizer)
        cfg = DataConfig(files=[str(data)], max_len=tiny["data"]["max_len"])
        samples, report = load_dataset(cfg, tokenizer)
        assert report.over_length == [] and len(samples) == 240, report.summary(cfg.max_len)
        longest = max(longest, *(len(s.ids) for s in samples))
    assert longest > 1024  # the old max_len dropped these
    assert tiny["data"]["max_len"] <= tiny["model"]["arch"]["max_position_embeddings"]
    assert tiny["data"]["max_len"] <= tiny["packing"]["max_tokens"]  # a sample fits a pack


def test_a_drop_says_how_many_why_and_the_length_that_would_keep_them():
    report = DataReport(loaded=5, samples=3)
    report.over_length = ["a.jsonl:3 (1142 ids)", "a.jsonl:9 (1255 ids)"]
    assert report.summary(1024) == (
        "3 samples (5 read, 2 over-length > max_len 1024 dropped (up to 1255 ids): "
        "a.jsonl:3 (1142 ids), a.jsonl:9 (1255 ids))"
    )
