"""Benchmark tasks from local files: HumanEval(+), MBPP(+), MultiPL-E HumanEval translations.

``--data-dir`` holds the layout of ``../shared/evaldata`` (see its README for provenance).
Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectioncoder.errors import UserError, not_utf8

__all__ = [
    "PythonTask",
    "MultiplETask",
    "default_data_dir",
    "load_humaneval_plus",
    "load_mbpp_plus",
    "load_multiple",
    "dataset_file",
    "file_hash",
    "mbpp_deserialize_inputs",
    "read_jsonl",
]

HUMANEVAL_PLUS_FILE = "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz"
MBPP_PLUS_FILE = "mbppplus/MbppPlus-v0.2.0.jsonl.gz"
MULTIPLE_DIR = "multipl_e"
# C#: the authors score the fixed file (they name it humaneval-cs-bu.jsonl), see _csharp_file.
_CSHARP_COPIES = ("cs-bu", "cs")


@dataclass
class PythonTask:
    """One EvalPlus task: ``base_inputs`` / ``plus_inputs`` are lists of argument lists."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    base_inputs: list[Any]
    plus_inputs: list[Any]
    atol: float
    dataset: str  # "humaneval" | "mbpp"
    first_test: str = ""  # MBPP: the first assertion, shown in the prompt
    extra: dict = field(default_factory=dict)


@dataclass
class MultiplETask:
    """One MultiPL-E task: the program is ``prompt + completion + tests``."""

    task_id: str
    language: str
    prompt: str
    tests: str
    stop_tokens: list[str]


def default_data_dir() -> Path | None:
    """``$REFLECTIONCODER_DATA_DIR``, else ``../shared/evaldata`` beside the checkout or cwd."""
    env = os.environ.get("REFLECTIONCODER_DATA_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parents[2]
    candidates += [here.parent / "shared" / "evaldata", Path.cwd().parent / "shared" / "evaldata"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def dataset_file(data_dir: str | Path, rel: str) -> Path:
    path = Path(data_dir) / rel
    if not path.is_file():
        raise FileNotFoundError(f"--data-dir: {path} not found (expected the evaldata layout)")
    return path


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes: the key of cached expected outputs."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSON-lines file (gzipped when it
    ends in .gz); a bad line is a UserError naming the file and the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rb") as f:  # decoded per line, so bad bytes name their line
        for n, raw in enumerate(_lines(f, path), 1):
            if not raw.strip():
                continue
            try:
                # utf-8-sig on line 1: a byte-order mark (Windows editors write one) is not data
                rows.append((n, json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))))
            except UnicodeDecodeError as exc:
                raise UserError(not_utf8(exc), file=path, line=n) from None
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"invalid JSON: {exc.msg}", file=path, line=n, column=exc.colno
                ) from None
    return rows


def _lines(f, path: Path) -> Iterator[bytes]:
    """The file's lines; a gzip file that is not one, or is cut short, is a UserError."""
    n = 0
    try:
        for n, raw in enumerate(f, 1):  # noqa: B007 - the line after n is the damaged one
            yield raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        why = f"damaged gzip file (cut short, or not gzip): {exc}"
        raise UserError(why, file=path, line=n + 1) from None


def _need(row: dict, key: str, path: Path, n: int) -> Any:
    if key not in row:
        raise ValueError(f"{path}:{n}:{key}: missing")
    return row[key]


def load_humaneval_plus(data_dir: str | Path) -> dict[str, PythonTask]:
    """HumanEval+ v0.1.10 (164 tasks); its base inputs are HumanEval's own tests."""
    path = dataset_file(data_dir, HUMANEVAL_PLUS_FILE)
    tasks = {}
    for n, row in read_jsonl(path):
        tid = _need(row, "task_id", path, n)
        tasks[tid] = PythonTask(
            task_id=tid,
            prompt=_need(row, "prompt", path, n),
            entry_point=_need(row, "entry_point", path, n),
            canonical_solution=_need(row, "canonical_solution", path, n),
            base_inputs=_need(row, "base_input", path, n),
            plus_inputs=_need(row, "plus_input", path, n),
            atol=float(_need(row, "atol", path, n)),
            dataset="humaneval",
        )
    return tasks


def load_mbpp_plus(data_dir: str | Path) -> dict[str, PythonTask]:
    """MBPP+ v0.2.0 (378 tasks), serialised inputs decoded as EvalPlus does."""
    path = dataset_file(data_dir, MBPP_PLUS_FILE)
    tasks = {}
    for n, row in read_jsonl(path):
        tid = _need(row, "task_id", path, n)
        assertion = _need(row, "assertion", path, n).strip()
        tasks[tid] = PythonTask(
            task_id=tid,
            prompt=_need(row, "prompt", path, n),
            entry_point=_need(row, "entry_point", path, n),
            canonical_solution=_need(row, "canonical_solution", path, n),
            base_inputs=mbpp_deserialize_inputs(tid, _need(row, "base_input", path, n)),
            plus_inputs=mbpp_deserialize_inputs(tid, _need(row, "plus_input", path, n)),
            atol=float(_need(row, "atol", path, n)),
            dataset="mbpp",
            first_test=assertion.split("\n")[0].strip(),
        )
    return tasks


# MBPP+ stores some inputs with types JSON cannot hold; these sets say how each task's inputs
# are rebuilt (the task lists are EvalPlus 0.3.1's, data/mbpp.py).
_ARGS_TO_TUPLES = {
    2,
    116,
    132,
    143,
    222,
    261,
    273,
    394,
    399,
    421,
    424,
    429,
    470,
    560,
    579,
    596,
    616,
    630,
    726,
    740,
    744,
    809,
}
_NESTED_TO_TUPLES = {63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780}
_FIRST_NESTED_TO_TUPLES = {75, 413, 444, 753}
_SECOND_TO_TUPLE = {106, 750}
_FIRST_TO_TUPLE = {250, 405, 446, 617, 720, 763, 808}
_NESTED_THEN_ARGS = {259, 401, 445}
_ALL_TUPLES = {580, 615, 791}


def _deep_tuple(x: Any) -> Any:
    return tuple(_deep_tuple(i) for i in x) if isinstance(x, list) else x


def mbpp_deserialize_inputs(task_id: str, inputs: list) -> list:
    """Rebuild the Python inputs of MBPP+ task ``Mbpp/N`` from its JSON form."""
    n = int(task_id.split("/")[-1])
    if n in _ARGS_TO_TUPLES:
        return [[tuple(a) for a in inp] for inp in inputs]
    if n in _NESTED_TO_TUPLES:
        return [[[tuple(x) for x in a] for a in inp] for inp in inputs]
    if n in _FIRST_NESTED_TO_TUPLES:
        return [[[tuple(x) for x in inp[0]]] + [inp[1]] for inp in inputs]
    if n in _SECOND_TO_TUPLE:
        return [[inp[0]] + [tuple(inp[1])] for inp in inputs]
    if n == 115:  # an empty list stands for an empty dict
        return [
            [[set(x) if isinstance(x, list) and len(x) else {} for x in inp[0]]] for inp in inputs
        ]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in _FIRST_TO_TUPLE:
        return [[tuple(inp[0])] + [inp[1]] for inp in inputs]
    if n in _NESTED_THEN_ARGS:
        nested = [[[tuple(x) for x in a] for a in inp] for inp in inputs]
        return [[tuple(a) for a in inp] for inp in nested]
    if n == 278:
        first = [[[tuple(x) if isinstance(x, list) else x for x in inp[0]]] for inp in inputs]
        return [[tuple(a) for a in inp] for inp in first]
    if n == 307:
        return [[tuple(inp[0])] + [inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{k: tuple(v) for k, v in inp[0].items()}] + inp[1:] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in _ALL_TUPLES:
        return [_deep_tuple(inp) for inp in inputs]
    return inputs


def multiple_languages(data_dir: str | Path) -> list[str]:
    """Languages with a MultiPL-E file in ``data_dir`` (C#'s two copies are one language)."""
    folder = Path(data_dir) / MULTIPLE_DIR
    tags = {p.stem.removeprefix("humaneval-") for p in folder.glob("humaneval-*.jsonl")}
    return sorted({"cs" if tag in _CSHARP_COPIES else tag for tag in tags})


def _csharp_file(folder: Path) -> Path:
    """The fixed C# file. MultiPL-E's C# tests compare list results with ``List.Equals``, which
    is reference equality, so a correct solution fails 44 tasks; the fix compares them with
    ``SequenceEqual``. The authors name the fixed copy ``humaneval-cs-bu.jsonl``; we take
    whichever copy carries the fix (in ``../shared/evaldata`` that is ``humaneval-cs.jsonl``)."""
    copies = [folder / f"humaneval-{tag}.jsonl" for tag in _CSHARP_COPIES]
    present = [p for p in copies if p.is_file()]
    if not present:
        return copies[0]
    return max(present, key=lambda p: p.read_text(encoding="utf-8").count(".SequenceEqual("))


def load_multiple(data_dir: str | Path, language: str) -> dict[str, MultiplETask]:
    """MultiPL-E HumanEval translation for ``language`` (e.g. ``cpp``, ``java``, ``sh``)."""
    folder = Path(data_dir) / MULTIPLE_DIR
    name = _csharp_file(folder).name if language == "cs" else f"humaneval-{language}.jsonl"
    path = dataset_file(data_dir, f"{MULTIPLE_DIR}/{name}")
    tasks = {}
    for n, row in read_jsonl(path):
        # the python file is HumanEval's own format (task_id, test) rather than MultiPL-E's
        name = row.get("name") or _need(row, "task_id", path, n)
        tests = row["tests"] if "tests" in row else _need(row, "test", path, n)
        tasks[name] = MultiplETask(
            task_id=name,
            language=language,
            prompt=_need(row, "prompt", path, n),
            tests=tests,
            stop_tokens=list(row.get("stop_tokens") or []),
        )
    return tasks
