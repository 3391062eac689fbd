"""Issue 21: one model client, 'grep shows no second OpenAI or transformers generate path'.
bench/bench_generate.py, which reports the generation speed of `evaluate --model`, called
transformers' generate() itself (no stops, its own batching), so it timed another path than the
command's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "reflectioncoder" / "generate"
# A model's generate(), vLLM's sampling, or an HTTP completion request made by hand.
GENERATING = re.compile(r"\.generate\(|SamplingParams\(|urlopen\(|/completions[\"']")


def test_only_the_client_generates():
    found = []
    for folder in ("reflectioncoder", "bench", "kernels"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if CLIENT in path.parents:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if GENERATING.search(line) and not line.lstrip().startswith("#"):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []
