"""Generation backends end to end: ``evaluate --model DIR`` with a tiny random Llama and a
locally trained tokenizer (transformers), and an OpenAI-compatible server (a local stub)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from reference.serialise import SPECIALS

from reflectioncoder import generate as gn
from reflectioncoder.eval.cli import add_arguments, main
from reflectioncoder.eval.prompts import GENERATION_STOP
from reflectioncoder.testing.http_stub import JsonHandler, serving
from reflectioncoder.testing.tiny_model import save_tiny_model


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return main(parser.parse_args([*argv, "--no-progress"]))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    out = tmp_path_factory.mktemp("tiny-llama")
    return save_tiny_model(out, texts, num_layers=2, special_tokens=SPECIALS)


def test_generate_hf_batched_greedy_is_deterministic(tiny_model):
    prompts = [
        "<|user|><|text|>hi<|endofblock|><|endofmessage|><|assistant|><|text|>```python\n",
        "def add(x, y):",
    ]
    cfg = gn.GenerationConfig(max_new_tokens=6, batch_size=2)
    a = gn.generate_hf(str(tiny_model), prompts, cfg, device="cpu")
    b = gn.generate_hf(
        str(tiny_model),
        prompts[::-1],
        gn.GenerationConfig(max_new_tokens=6, batch_size=1),
        device="cpu",
    )
    assert a == b[::-1]  # left padding: batched greedy equals one by one
    assert all(len(outs) == 1 and isinstance(outs[0], str) for outs in a)
    assert not any(stop in outs[0] for outs in a for stop in GENERATION_STOP)
    sampled = gn.generate_hf(
        str(tiny_model),
        prompts[:1],
        gn.GenerationConfig(max_new_tokens=4, temperature=1.0, n=3),
        device="cpu",
    )
    assert len(sampled) == 1 and len(sampled[0]) == 3


def test_evaluate_model_dir(tiny_model, tmp_path, shared_dir):
    out = tmp_path / "result.json"
    rc = _run_cli(
        "--task",
        "humaneval",
        "--model",
        str(tiny_model),
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
        "--data-dir",
        str(shared_dir / "evaldata"),
        "--json",
        str(out),
    )
    assert rc == 0
    samples = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    assert all(set(s) == {"task_id", "completion"} for s in samples)
    result = json.loads(out.read_text())
    assert set(result["scores"]) == {"HumanEval", "HumanEval+"}
    assert set(result["details"]) == {"HumanEval/0", "HumanEval/1"}


class _Stub(JsonHandler):
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.read_json()
        _Stub.requests.append({"path": self.path, **body})
        # an answer that closes the fence and then keeps talking past the stop token
        text = "    return x + y\n```<|endofblock|><|endofmessage|>ignored"
        self.reply({"choices": [{"index": i, "text": text} for i in range(body.get("n", 1))]})


def test_openai_compatible_endpoint(tmp_path, shared_dir):
    with serving(_Stub, threaded=False) as base:
        out = tmp_path / "r.json"
        rc = _run_cli(
            "--task",
            "mbpp",
            "--model",
            "stub-model",
            "--backend",
            "openai",
            "--base-url",
            base + "/v1",
            "--limit",
            "3",
            "--base-only",
            "--data-dir",
            str(shared_dir / "evaldata"),
            "--json",
            str(out),
        )
    assert rc == 0
    assert len(_Stub.requests) == 3
    req = _Stub.requests[0]
    assert req["path"] == "/v1/completions" and req["model"] == "stub-model"
    assert req["temperature"] == 0.0 and req["stop"] == GENERATION_STOP
    assert req["prompt"].startswith("<|user|><|text|>") and req["prompt"].endswith("```python\n")
    samples = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert [s["completion"] for s in samples] == ["return x + y"] * 3


def test_generation_config_validates():
    with pytest.raises(ValueError, match="temperature"):
        gn.GenerationConfig(temperature=-1)
    with pytest.raises(ValueError, match="n > 1"):
        gn.GenerationConfig(n=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gn.GenerationConfig(max_new_tokens=0)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_stop_strings_end_a_sequence_at_its_text(tiny_model):
    prompt = ["def add(x, y):"]
    free = gn.generate_hf(str(tiny_model), prompt, gn.GenerationConfig(max_new_tokens=12))[0][0]
    stop = free[3:5]  # text the model writes anyway: generation must end there
    assert stop and stop in free
    cut = gn.generate_hf(
        str(tiny_model), prompt, gn.GenerationConfig(max_new_tokens=12, stop_strings=(stop,))
    )[0][0]
    assert cut == free[: free.find(stop)]


def test_evaluate_chat_format_reports_generation_speed(tiny_model, tmp_path, shared_dir):
    """--prompt-format chat renders the model's own template (here ChatML), and the result
    holds the tokens generated and their rate."""
    from transformers import AutoTokenizer

    chat_model = tmp_path / "chat"
    chat_model.mkdir()
    for f in tiny_model.iterdir():
        (chat_model / f.name).write_bytes(f.read_bytes())
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = CHATML
    tok.save_pretrained(chat_model)
    out = tmp_path / "mbpp.json"
    rc = _run_cli(
        "--task", "mbpp", "--model", str(chat_model), "--prompt-format", "chat",
        "--limit", "2", "--max-new-tokens", "8", "--threads", "1", "--device", "cpu",
        "--data-dir", str(shared_dir / "evaldata"), "--json", str(out),
    )  # fmt: skip
    assert rc == 0
    gen = json.loads(out.read_text())["generation"]
    assert 0 < gen["new_tokens"] <= 2 * 8 and gen["threads"] == 1
    # tokens/s from the unrounded time; seconds are rounded to 0.01
    assert (
        abs(gen["tokens_per_s"] * gen["seconds"] - gen["new_tokens"]) <= gen["tokens_per_s"] / 190
    )
    from reflectioncoder.errors import UsageError

    with pytest.raises(UsageError, match="HumanEval and MBPP with --backend hf or vllm only"):
        _run_cli("--task", "multiple-cpp", "--model", str(chat_model), "--prompt-format", "chat")
