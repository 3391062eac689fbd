"""Issue 10: the shapes `datasets` gives a user, each made here with `datasets` itself from the
same fresh random rows: a DatasetDict's `save_to_disk` folder, `to_json` (json lines in a .json
file), `to_parquet`, and a single Dataset's `save_to_disk`. `prepare-data` reads every one the
same, row for row (ReflectionSeq taken as it is, any number of turns; CodeFeedback converted)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

REPO = Path(__file__).resolve().parents[1]


def _block(text: str) -> list[dict]:
    return [{"type": "text", "content": text}]


def _reflection(rng: random.Random) -> dict:
    rounds = rng.randint(1, 3)
    messages = [{"role": "user", "content": _block(f"task {rng.random():.6f}")}]
    for r in range(rounds):
        messages.append({"role": "assistant", "content": _block(f"attempt {r} {rng.random()}")})
        if r < rounds - 1:
            messages.append({"role": "user", "content": _block("it failed")})
    messages.append({"role": "user", "content": _block("Answer in one block.")})
    messages.append({"role": "assistant", "content": _block("```python\nprint(2)\n```")})
    return {"messages": messages, "type": "reflection"}


def _prepare(src: Path, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "reflectioncoder.cli", "prepare-data", "--in", str(src)]
    cmd += ["--out", str(out), "--no-decontaminate"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (src, proc.stdout + proc.stderr)
    return [json.loads(line) for line in out.open()]


@pytest.mark.parametrize("kind", ["reflectionseq", "codefeedback"])
def test_every_datasets_shape_prepares_the_same(tmp_path, kind):
    rng = random.Random()
    if kind == "reflectionseq":
        rows = [_reflection(rng) for _ in range(7)]
    else:
        rows = [
            {"query": f"q &lt;{i}&gt; {rng.random()}", "answer": f"\ta\r\nb {i} ", "lang": "py"}
            for i in range(7)
        ]
    ds = datasets.Dataset.from_list(rows)
    shapes = {}
    datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "dict")
    shapes["save_to_disk (DatasetDict)"] = tmp_path / "dict"
    ds.save_to_disk(tmp_path / "single")
    shapes["save_to_disk (Dataset)"] = tmp_path / "single"
    ds.to_json(tmp_path / "rows.json")
    shapes["to_json"] = tmp_path / "rows.json"
    ds.to_parquet(tmp_path / "rows.parquet")
    shapes["to_parquet"] = tmp_path / "rows.parquet"

    got = {name: _prepare(src, tmp_path / f"out{i}.jsonl") for i, (name, src) in
           enumerate(shapes.items())}  # fmt: skip
    first = got["to_json"]
    assert len(first) == len(rows)
    for name, samples in got.items():
        assert samples == first, name
    if kind == "reflectionseq":
        assert [s["messages"] for s in first] == [r["messages"] for r in rows]
    else:
        texts = [s["messages"][1]["content"][0]["content"] for s in first]
        assert texts == [f"a\nb {i}" for i in range(7)]
        assert first[0]["messages"][0]["content"][0]["content"].startswith("q <0> ")
