"""Small SPEC §1 jsonl files for trainer tests and smoke runs (no model-written code runs).

Reflection samples: an instruction, a reflection (text, code, execution, text, code,
execution), the instruction again, the one-off answer; a share of generation samples.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_OPS = [("add", "+"), ("sub", "-"), ("mul", "*")]


def _block(kind: str, content: str) -> dict[str, str]:
    return {"type": kind, "content": content}


def toy_sample(rng: random.Random, reflection: bool) -> dict:
    """One sample: a tiny arithmetic function, first wrong, then fixed."""
    name, op = rng.choice(_OPS)
    k = rng.randint(1, 9)
    instruction = f"Write {name}{k}(x) returning x {op} {k}."
    good = f"def {name}{k}(x):\n    return x {op} {k}"
    answer = [_block("text", f"```python\n{good}\n```")]
    if not reflection:
        return {
            "type": "generation",
            "messages": [
                {"role": "user", "content": [_block("text", instruction)]},
                {"role": "assistant", "content": answer},
            ],
        }
    bad = f"def {name}{k}(x):\n    return x {op} {k + 1}"
    x = rng.randint(0, 20)
    body = [
        _block("text", "Let me try."),
        _block("code", f"{bad}\nprint({name}{k}({x}))"),
        _block("execution", "AssertionError" if rng.random() < 0.5 else ""),
        _block("text", f"Off by one: use {k}."),
        _block("code", f"{good}\nprint({name}{k}({x}))"),
        _block("execution", "ok"),
    ]
    return {
        "type": "reflection",
        "messages": [
            {"role": "user", "content": [_block("text", instruction)]},
            {"role": "assistant", "content": body},
            {"role": "user", "content": [_block("text", instruction)]},
            {"role": "assistant", "content": answer},
        ],
    }


def write_toy_jsonl(
    path: str | Path, n: int, seed: int = 0, generation_fraction: float = 0.25
) -> Path:
    """Write ``n`` toy samples to ``path`` (jsonl); returns the path."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps(toy_sample(rng, rng.random() >= generation_fraction)) + "\n")
    return path
