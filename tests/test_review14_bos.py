"""``evaluate --model`` with a tokenizer that does not add BOS itself (SmolLM2's, Qwen's).

Training encodes every sequence as ``[BOS] + tokenize(text)`` (SPEC §1), whatever the
tokenizer; the spec prompt was encoded with the tokenizer's own rule, so a model fine-tuned
from SmolLM2 was evaluated on prompts without the BOS it always saw first."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from reference.serialise import SPECIALS

from reflectioncoder.data.tokenize import encode_text
from reflectioncoder.eval import prompts as pr
from reflectioncoder.eval.cli import add_arguments
from reflectioncoder.eval.completions import generate_samples
from reflectioncoder.eval.request import EvalRequest
from reflectioncoder.eval.tasks import load_humaneval_plus
from reflectioncoder.generate.local import LocalModel
from reflectioncoder.testing.tiny_model import save_tiny_model


@pytest.fixture(scope="module")
def model_without_auto_bos(tmp_path_factory) -> Path:
    from tokenizers import processors
    from transformers import AutoTokenizer

    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    out = save_tiny_model(tmp_path_factory.mktemp("nobos"), texts, special_tokens=SPECIALS)
    tok = AutoTokenizer.from_pretrained(out)
    tok._tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("x")["input_ids"][0] != tok.bos_token_id  # as SmolLM2's: no BOS added
    return out


def _request(model: Path, tmp_path: Path, shared_dir: Path, *extra: str) -> EvalRequest:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--task", "humaneval", "--model", str(model), "--limit", "1", "--max-new-tokens", "2"]
    argv += ["--data-dir", str(shared_dir / "evaldata"), "--json", str(tmp_path / "r.json")]
    return EvalRequest.from_args(parser.parse_args([*argv, *extra, "--no-progress"]))


def test_the_spec_prompt_is_encoded_as_training_encodes(
    model_without_auto_bos, tmp_path, shared_dir, monkeypatch
) -> None:
    from transformers import AutoTokenizer

    seen = []
    generate = LocalModel._generate

    def spy(self, enc, config):
        seen.append(enc["input_ids"][0].tolist())
        return generate(self, enc, config)

    monkeypatch.setattr(LocalModel, "_generate", spy)
    req = _request(model_without_auto_bos, tmp_path, shared_dir, "--device", "cpu")
    tasks = dict(list(load_humaneval_plus(shared_dir / "evaldata").items())[:1])
    rows = generate_samples(req, tasks, {})
    assert len(rows) == 1 and len(seen) == 1
    tok = AutoTokenizer.from_pretrained(model_without_auto_bos)
    text = pr.python_prompt(tasks["HumanEval/0"])
    assert seen[0] == encode_text(tok, text)[:-1]  # [BOS] + the prompt, as in training


def test_a_tokenizer_that_adds_bos_gets_no_second_one(model_without_auto_bos) -> None:
    from transformers import AutoTokenizer

    from reflectioncoder.tokenizer import train_tokenizer

    assert pr.bos_text(train_tokenizer(["def f(): pass\n"] * 5, 300)) == ""
    tok = AutoTokenizer.from_pretrained(model_without_auto_bos)
    assert pr.bos_text(tok) == tok.bos_token
