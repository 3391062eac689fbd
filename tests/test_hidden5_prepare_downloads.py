"""Issue 10 as a user meets it: `reflectioncoder prepare-data` on data in the shape a hub download
gives it (a snapshot folder with a README and `data/train-*.parquet` shards of CodeFeedback's
columns), with benchmark prompts planted among fresh random samples: a HumanEval prompt with its
function renamed, re-indented with tabs and a word changed, an MBPP task with its asserts,
and a ReflectionSeq sample whose reflection copies a HumanEval docstring. The planted rows are
dropped and reported per benchmark, the clean ones kept and normalised as the authors do."""

from __future__ import annotations

import gzip
import html
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reflectioncoder.data.decontaminate import BenchmarkIndex, words

REPO = Path(__file__).resolve().parents[1]
EVALDATA = REPO.parent / "shared" / "evaldata"

pytestmark = pytest.mark.skipif(not EVALDATA.is_dir(), reason="needs ../shared/evaldata")

WORDS = "alpha beta gamma delta river stone cloud maple orbit pixel quartz ember lantern".split()


def _clean_row(rng: random.Random) -> dict:
    name = "_".join(rng.sample(WORDS, 2))
    query = (
        f"Write {name}() that returns the {rng.choice(WORDS)} count &amp; its {rng.choice(WORDS)}."
    )
    answer = (
        f"  \r\n```python\r\ndef {name}(x):\r\n\treturn len(x) + {rng.randint(1, 99)}\r\n```\r\n "
    )
    return {"query": query, "answer": answer, "resource": "synthetic", "lang": "python"}


def _edited_humaneval(rng: random.Random) -> tuple[str, str]:
    with gzip.open(EVALDATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        tasks = [json.loads(line) for line in f]
    task = rng.choice([t for t in tasks if len(_docstring(t["prompt"]).split()) > 40])
    prompt = re.sub(rf"\b{task['entry_point']}\b", "my_renamed_fn", task["prompt"])
    prompt = prompt.replace("    ", "\t")
    tokens = prompt.split(" ")
    plain = [i for i, t in enumerate(tokens) if t.isalpha()]
    for i in rng.sample(plain, 1):  # a word changed
        tokens[i] = "zzword"
    return task["task_id"], "Please complete this:\n" + " ".join(tokens)


def _docstring(text: str) -> str:
    return max(re.split("\"\"\"|'''", text)[1::2] or [""], key=len)


def _reported(example: dict, he_id: str) -> bool:
    """The report names the planted task, or one whose prompt holds the matched n-gram too
    (HumanEval/40 and /43 share most of their text)."""
    with gzip.open(EVALDATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        prompts = {t["task_id"]: t["prompt"] for t in map(json.loads, f)}
    match = example["match"]
    return example["task_id"] == he_id or (
        match in " ".join(words(prompts[he_id]))
        and match in " ".join(words(prompts[example["task_id"]]))
    )


def _mbpp_task(rng: random.Random) -> tuple[str, str]:
    rows = [json.loads(line) for line in open(EVALDATA / "mbpp_original" / "mbpp_test.jsonl")]
    task = rng.choice(rows)
    text = task.get("text") or task.get("prompt")
    return str(task["task_id"]), text + "\nYour code should pass:\n" + "\n".join(task["test"])


def test_planted_prompts_in_a_hub_snapshot_are_dropped_and_reported(tmp_path):
    rng = random.Random()
    clean = [_clean_row(rng) for _ in range(12)]
    he_id, he_text = _edited_humaneval(rng)
    mbpp_id, mbpp_text = _mbpp_task(rng)
    planted = [
        {
            "query": he_text,
            "answer": "def my_renamed_fn():\n    pass",
            "resource": "x",
            "lang": "py",
        },
        {"query": "Solve it.", "answer": mbpp_text, "resource": "x", "lang": "python"},
    ]
    rows = clean[:6] + planted[:1] + clean[6:] + planted[1:]
    snapshot = tmp_path / "downloads" / "codefeedback"
    (snapshot / "data").mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n# CodeFeedback\n")
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        table = pa.Table.from_pylist(part)
        pq.write_table(table, snapshot / "data" / f"train-0000{i}-of-00002.parquet")

    out = tmp_path / "prepared" / "code_instruct.jsonl"
    cmd = [sys.executable, "-m", "reflectioncoder.cli", "prepare-data", "--in", str(snapshot)]
    cmd += ["--out", str(out), "--data-dir", str(EVALDATA)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    got = [json.loads(line) for line in out.open()]
    want = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "content": html.unescape(r["query"])}],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "text",
                            "content": html.unescape(r["answer"])
                            .replace("\r\n", "\n")
                            .replace("\t", "    ")
                            .strip(),
                        }
                    ],
                },
            ],
            "type": "generation",
        }
        for r in clean
    ]
    assert [_texts(s) for s in got] == [_texts(s) for s in want]
    assert all(s["type"] == "generation" for s in got)

    manifest = json.loads(out.with_name("code_instruct.manifest.json").read_text())
    benchmarks = manifest["decontamination"]["benchmarks"]
    assert benchmarks["humaneval"]["samples_matched"] >= 1, benchmarks["humaneval"]
    assert any(_reported(e, he_id) for e in benchmarks["humaneval"]["examples"]), benchmarks
    assert benchmarks["mbpp"]["samples_matched"] >= 1, benchmarks["mbpp"]
    assert sum(i["decontaminated"] for i in manifest["inputs"]) == 2
    assert sum(i["read"] for i in manifest["inputs"]) == len(rows)


def _texts(sample: dict) -> list[tuple[str, str]]:
    out = []
    for m in sample["messages"]:
        content = m["content"]
        text = content if isinstance(content, str) else "".join(b["content"] for b in content)
        out.append((m["role"], text))
    return out


def test_a_reflection_that_copies_a_docstring_is_dropped(tmp_path):
    rng = random.Random()
    he_id, he_text = _edited_humaneval(rng)
    docstring = _docstring(he_text)

    def sample(reflection: str) -> dict:
        block = lambda t: [{"type": "text", "content": t}]  # noqa: E731
        return {
            "messages": [
                {"role": "user", "content": block("Write a helper " + rng.choice(WORDS))},
                {"role": "assistant", "content": block(reflection)},
                {"role": "user", "content": block("Now answer in one block.")},
                {"role": "assistant", "content": block("```python\nprint(1)\n```")},
            ],
            "type": "reflection",
        }

    rows = [sample(f"I ran it; {w} failed, so I fix it.") for w in rng.sample(WORDS, 5)]
    rows.insert(rng.randrange(len(rows)), sample("I recall the spec:\n" + docstring))
    src = tmp_path / "reflection.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "reflectioncoder.cli", "prepare-data", "--in", str(src)]
    cmd += ["--out", str(out), "--data-dir", str(EVALDATA)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = [json.loads(line) for line in out.open()]
    assert len(kept) == 5
    assert all("I recall the spec" not in json.dumps(s) for s in kept)
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    examples = manifest["decontamination"]["benchmarks"]["humaneval"]["examples"]
    assert any(_reported(e, he_id) for e in examples), examples


def test_a_copy_of_a_task_that_shares_text_with_another_names_the_copied_one():
    """HumanEval/43 repeats most of /40's docstring: a copy of /43 with its function renamed is
    reported as /43 (an n-gram both share was credited to the first, and the report named /40)."""
    with gzip.open(EVALDATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        prompts = {t["task_id"]: t["prompt"] for t in map(json.loads, f)}
    index = BenchmarkIndex.load(EVALDATA)
    for task_id in ("HumanEval/40", "HumanEval/43"):
        renamed = re.sub(r"\w+_sum_to_zero", "solve", prompts[task_id])
        hits = {h.benchmark: h.task_id for h in index.hits("Solve:\n" + renamed)}
        assert hits["humaneval"] == task_id, hits
