"""The embedded demo's pipeline, end to end with a handful of steps (the full demo: make demo)."""

from __future__ import annotations

import json
import math

import pytest

from reflectioncoder.demo import generation_prompt, main, run_demo
from reflectioncoder.eval.prompts import postprocess_chat


def test_generation_prompt_is_spec_section_5() -> None:
    prompt = 'def f(x):\n    """Doc."""\n'
    expected = (
        "<|user|><|text|>Write a complete Python function for the problem.\n\n"
        + prompt.strip()
        + "<|endofblock|><|endofmessage|><|assistant|><|text|>```python\n"
    )
    assert generation_prompt(prompt) == expected


@pytest.mark.parametrize(
    "raw, cut",
    [
        ("def f(x):\n    return x\n```\nmore", "def f(x):\n    return x"),
        ("def f(x):\n    return x\nassert f(1) == 1", "def f(x):\n    return x"),
        ("def f(x):\n    return x\n# Test\nf(1)", "def f(x):\n    return x"),
        (
            "def f(x):\n    if x:\n        return x\nif True: pass",
            "def f(x):\n    if x:\n        return x",
        ),
        ("def f(x):\n    return x\nprint(f(1))", "def f(x):\n    return x"),
        ("", ""),
    ],
)
def test_completion_is_cut_at_the_fence_and_stop_strings(raw: str, cut: str) -> None:
    assert postprocess_chat(raw) == cut  # the demo cuts its completion so


# A demo of a handful of steps (tests/test_model_card.py reads its card).
SMALL_DEMO = dict(n=6, workers=4, max_steps=3, samples_per_step=2, max_new_tokens=6, progress=False)


@pytest.mark.slow  # 24-83 s wall on the busy shared 2-core machine (~18 s CPU), mostly imports
def test_demo_pipeline_end_to_end(tmp_path, seed: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reflectioncoder.data.schema import load_jsonl

    res = run_demo(tmp_path / "demo", seed=seed, **SMALL_DEMO)
    samples = load_jsonl(res.data)
    assert len(samples) == 6 and any(s.is_reflection for s in samples)
    assert (res.tokenizer / "tokenizer.json").is_file()
    rows = [json.loads(line) for line in res.metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] == list(range(1, res.steps + 1))
    # The full method ran: the mask rate follows SPEC §3's schedule, the loss has a KL part.
    assert [r["mask_rate"] for r in rows] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(math.isfinite(r["loss"]) and r["kl"] >= 0 for r in rows)
    assert res.first_loss == pytest.approx(rows[0]["loss"])
    assert res.last_loss == pytest.approx(rows[-1]["loss"])
    # The checkpoint loads with plain transformers and holds the special tokens.
    model = AutoModelForCausalLM.from_pretrained(str(res.checkpoint))
    tokenizer = AutoTokenizer.from_pretrained(str(res.checkpoint))
    assert "<|execution|>" in tokenizer.get_vocab()
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    assert res.prompt.startswith("<|user|><|text|>Write a complete Python function")
    assert "```" not in res.completion
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["checkpoint"] == str(res.checkpoint)


def test_demo_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="n:"):
        run_demo(tmp_path, n=1)
    with pytest.raises(SystemExit):
        main(["--n", "not-a-number"])


@pytest.mark.slow  # ~40-90 s: the demo, small, as a real process
def test_demo_log_is_readable_in_a_file(tmp_path) -> None:
    """`make demo > log.txt 2>&1`: no carriage-return redraws, no escape codes, each message
    once, training progress as plain lines that name the step just finished."""
    import os
    import re
    import subprocess
    import sys

    log = tmp_path / "log.txt"
    argv = [sys.executable, "-m", "reflectioncoder.demo", "--out", str(tmp_path / "demo")]
    argv += ["--n", "8", "--steps", "6", "--samples-per-step", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with log.open("w") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, check=True, timeout=600)
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert sum(line.startswith("data: ") for line in lines) == 1
    steps = [line for line in lines if line.startswith("train: ")]
    assert [int(re.match(r"train: (\d+)/6", s).group(1)) for s in steps] == [1, 2, 3, 4, 5, 6]
    # The line of step k shows step k's loss (metrics.jsonl), not the step before's.
    rows = [json.loads(r) for r in (tmp_path / "demo/train/metrics.jsonl").read_text().splitlines()]
    for line, row in zip(steps, rows, strict=True):
        assert f"loss {row['loss']:.4f}" in line
    assert "it/s" not in text  # no third-party bar either (the demo shows real tracebacks)
