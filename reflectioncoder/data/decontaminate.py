"""Benchmark decontamination: drop training samples that share a word 10-gram with a prompt.

The rule is DeepSeek-Coder's (the base model of the paper's DS runs; its report, §2.1): a
sample that contains any 10-gram of a benchmark's text is contaminated; a benchmark text
shorter than 10 words counts when it appears whole. Text is normalised first: lower case,
split into runs of letters, digits and underscores (so case, punctuation, whitespace,
indentation and line endings do not hide a copy, and one edited word leaves the other
10-grams of a prompt to match). 10 rather than GPT-3's 13: benchmark prompts are short (an
MBPP task is one sentence and an assertion), and 13-grams miss more lightly edited copies.

Benchmark texts (``../shared/evaldata`` layout, as ``reflectioncoder evaluate`` reads it):
HumanEval and HumanEval+ prompts; MBPP's test split (the 500 scored tasks: the description and
its three assertions) and MBPP+ prompts (description and one assertion); the MultiPL-E prompts
of every language present. An n-gram shared by more than ``MAX_TASKS_PER_NGRAM`` tasks of one
benchmark is boilerplate (MultiPL-E's Java imports, ``from typing import List``), not a
fingerprint of a task, and is left out.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

NGRAM = 10
MIN_WHOLE_WORDS = 3  # shorter benchmark texts are not matched whole (too common)
MAX_TASKS_PER_NGRAM = 2
EXAMPLES = 5  # examples kept per benchmark in the report
_WORD_RE = re.compile(r"[a-z0-9_]+")

# benchmark -> (file relative to the data dir, how to read its texts)
BENCHMARKS = {
    "humaneval": "humaneval/HumanEval.jsonl.gz",
    "humanevalplus": "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz",
    "mbpp": "mbpp_original/mbpp_test.jsonl",
    "mbppplus": "mbppplus/MbppPlus-v0.2.0.jsonl.gz",
    "multipl_e": "multipl_e",
}


def words(text: str) -> list[str]:
    """The normalised word sequence of ``text``."""
    return _WORD_RE.findall(text.lower())


def ngrams(seq: list[str], n: int = NGRAM) -> set[str]:
    return {" ".join(seq[i : i + n]) for i in range(len(seq) - n + 1)}


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def benchmark_texts(data_dir: str | Path) -> dict[str, list[tuple[str, str]]]:
    """benchmark -> [(task id, text)] for every benchmark file present under ``data_dir``."""
    data_dir = Path(data_dir)
    out: dict[str, list[tuple[str, str]]] = {}
    for name, rel in BENCHMARKS.items():
        path = data_dir / rel
        if name == "multipl_e":
            files = sorted(path.glob("humaneval-*.jsonl")) if path.is_dir() else []
            texts = []
            for f in files:
                lang = f.stem.removeprefix("humaneval-")
                for row in _rows(f):
                    task = row.get("name") or row.get("task_id")
                    texts.append((f"{lang}/{task}", row["prompt"]))
        elif not path.is_file():
            continue
        elif name == "mbpp":
            texts = [
                (str(r["task_id"]), r["prompt"] + "\n" + "\n".join(r["test"])) for r in _rows(path)
            ]
        else:
            texts = [(r["task_id"], r["prompt"]) for r in _rows(path)]
        if texts:
            out[name] = texts
    if not out:
        raise FileNotFoundError(
            f"--data-dir: no benchmark files under {data_dir} (expected the evaldata layout: "
            + ", ".join(BENCHMARKS.values())
            + ")"
        )
    return out


@dataclass(frozen=True)
class Hit:
    benchmark: str
    task_id: str
    match: str  # the shared n-gram (or the whole short text)


@dataclass
class BenchmarkIndex:
    """n-gram -> (benchmark, task) for every benchmark, boilerplate left out."""

    grams: dict[str, list[tuple[str, str]]]  # n-gram -> [(benchmark, task)], one per benchmark
    whole: dict[str, list[tuple[str, str]]]  # short texts, matched whole
    tasks: dict[str, int] = field(default_factory=dict)  # benchmark -> tasks indexed

    def __post_init__(self) -> None:
        # Words of the indexed n-grams: a window holding any other word cannot match.
        self.vocab = frozenset(w for g in self.grams for w in g.split())

    @classmethod
    def from_texts(cls, texts: dict[str, list[tuple[str, str]]]) -> BenchmarkIndex:
        grams: dict[str, list[tuple[str, str]]] = defaultdict(list)
        whole: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for bench, items in texts.items():
            # n-gram -> {task: its first id}; MultiPL-E: one task in many languages counts once
            # (its name after the "/").
            owners: dict[str, dict[str, str]] = defaultdict(dict)
            for task_id, text in items:
                seq = words(text)
                if MIN_WHOLE_WORDS <= len(seq) < NGRAM:
                    whole[" ".join(seq)].append((bench, task_id))
                task_key = task_id.split("/", 1)[-1]
                for g in ngrams(seq):
                    owners[g].setdefault(task_key, task_id)
            for g, tasks in owners.items():
                if len(tasks) <= MAX_TASKS_PER_NGRAM:
                    grams[g].extend((bench, task_id) for task_id in tasks.values())
        return cls(dict(grams), dict(whole), {b: len(items) for b, items in texts.items()})

    @classmethod
    def load(cls, data_dir: str | Path) -> BenchmarkIndex:
        """The index of ``data_dir``'s benchmarks (built once per process and folder)."""
        return _load_index(str(Path(data_dir).resolve()))

    def hits(self, text: str) -> list[Hit]:
        """One hit per benchmark whose text ``text`` shares an n-gram with (or holds whole): the
        task it shares the most n-grams with (an n-gram two tasks share, as HumanEval/40 and
        /43 do, names the one the text copies), with its first shared n-gram."""
        seq = words(text)
        shared: dict[tuple[str, str], list] = {}  # (benchmark, task) -> [count, first n-gram]
        last_unknown = -1  # windows reaching back to an unindexed word are skipped unjoined
        for end, word in enumerate(seq):
            if word not in self.vocab:
                last_unknown = end
                continue
            start = end - NGRAM + 1
            if start <= last_unknown:
                continue
            g = " ".join(seq[start : end + 1])
            for owner in self.grams.get(g, ()):
                shared.setdefault(owner, [0, g])[0] += 1
        found: dict[str, Hit] = {}
        best: dict[str, int] = {}
        for (bench, task_id), (count, g) in shared.items():
            if count > best.get(bench, 0):
                best[bench], found[bench] = count, Hit(bench, task_id, g)
        if self.whole:
            joined = f" {' '.join(seq)} "
            for short, owners in self.whole.items():
                if f" {short} " in joined:
                    for bench, task_id in owners:
                        found.setdefault(bench, Hit(bench, task_id, short))
        return list(found.values())


@functools.lru_cache(maxsize=2)
def _load_index(data_dir: str) -> BenchmarkIndex:
    return BenchmarkIndex.from_texts(benchmark_texts(data_dir))


def sample_text(sample: dict) -> str:
    """Every block of every message of a ReflectionSeq row, one per line."""
    return "\n".join(
        block.get("content", "")
        for message in sample.get("messages", [])
        for block in message.get("content", [])
    )


@dataclass
class ContaminationReport:
    """Per benchmark: samples that matched it, and a few examples (where, task, n-gram)."""

    rows: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, source: str, hits: list[Hit]) -> None:
        for hit in hits:
            self.rows[hit.benchmark] = self.rows.get(hit.benchmark, 0) + 1
            shown = self.examples.setdefault(hit.benchmark, [])
            if len(shown) < EXAMPLES:
                shown.append({"where": source, "task_id": hit.task_id, "match": hit.match})

    def as_dict(self, index: BenchmarkIndex) -> dict:
        return {
            bench: {
                "tasks_indexed": index.tasks[bench],
                "samples_matched": self.rows.get(bench, 0),
                "examples": self.examples.get(bench, []),
            }
            for bench in index.tasks
        }
