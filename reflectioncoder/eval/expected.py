"""Expected outputs of HumanEval(+) and MBPP(+): the canonical solutions run once in the
sandbox (trusted code, generous limits), their outputs and CPU times cached on disk as JSON
lines keyed by the dataset file's sha256, so a run computes only the tasks not cached yet."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reflectioncoder.errors import ctrl_c_to_main_thread
from reflectioncoder.eval.compare import MBPP_OUTPUT_NOT_NONE
from reflectioncoder.eval.sandbox import (
    codec,
    harness_argv,
    harness_files,
    run_sandboxed,
    site_paths,
)
from reflectioncoder.eval.tasks import PythonTask

__all__ = ["cache_dir", "expected_outputs"]

CACHE_VERSION = "6"  # of the cache's format; 6: ground-truth times are CPU seconds
GROUND_TRUTH_MEMORY_MB = 8 * 4096  # trusted code; EvalPlus runs it unlimited, in-process


def cache_dir() -> Path:
    root = os.environ.get("REFLECTIONCODER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "reflectioncoder"
    )
    return Path(root) / "eval"


def _ground_truth_job(task: PythonTask) -> str:
    not_none = task.dataset == "mbpp" and task.entry_point in MBPP_OUTPUT_NOT_NONE
    return json.dumps(
        {
            "code": task.prompt + task.canonical_solution,
            "entry_point": task.entry_point,
            "record": True,
            "sys_path": site_paths(),
            "output_not_none": not_none,
            "phases": [
                {"name": "base", "inputs": codec.encode(task.base_inputs)},
                {"name": "plus", "inputs": codec.encode(task.plus_inputs)},
            ],
        }
    )


def _run_ground_truth(task: PythonTask) -> dict:
    res = run_sandboxed(
        harness_argv(),
        files=harness_files(),
        stdin=_ground_truth_job(task),
        timeout_s=600,
        memory_mb=GROUND_TRUTH_MEMORY_MB,
        output_limit=1 << 30,
    )
    got: dict[str, dict[str, list]] = {"base": {"out": [], "t": []}, "plus": {"out": [], "t": []}}
    for line in res.stdout.splitlines():
        row = json.loads(line)  # kept encoded: this goes to the cache file as is
        if "i" in row:
            got[row["phase"]]["out"].append(row["out"])
            got[row["phase"]]["t"].append(row["t"])
    for phase, n in (("base", len(task.base_inputs)), ("plus", len(task.plus_inputs))):
        if len(got[phase]["out"]) != n:
            raise RuntimeError(
                f"{task.task_id}: the canonical solution failed on {phase} input "
                f"{len(got[phase]['out'])}: {res.stderr[-2000:]}"
            )
    return got


def expected_outputs(
    tasks: dict[str, PythonTask],
    source_hash: str,
    *,
    parallel: int = 2,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict]:
    """Expected outputs and ground-truth times of ``tasks``, cached on disk by the dataset
    file's hash: ``{task_id: {"base": {"out": [...], "t": [...]}, "plus": ...}}``. The cache is
    JSON lines, one task per line in the tagged encoding, so a run decodes only its tasks;
    tasks missing from it are computed by running their canonical solutions and appended."""
    cache = cache_dir() / f"expected-{source_hash[:32]}-v{CACHE_VERSION}.jsonl"
    lines = _read_cache(cache)
    rows = {tid: _decoded(lines[tid]) for tid in tasks if tid in lines}
    missing = [tid for tid in tasks if rows.get(tid) is None]
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max(1, parallel), initializer=ctrl_c_to_main_thread) as pool:
            got_all = pool.map(_run_ground_truth, [tasks[t] for t in missing])
            for tid, got in zip(missing, got_all, strict=True):
                lines[tid] = (json.dumps({"task_id": tid, **got}) + "\n").encode()
                _append_line(cache, lines[tid])
                rows[tid] = _task_row(lines[tid])
                if progress:
                    progress(1)
    elif progress:
        progress(len(tasks))
    return {tid: {**rows[tid], "bytes": len(lines[tid])} for tid in tasks}


def _read_cache(cache: Path) -> dict[str, bytes]:
    """Each task's last whole line. A last line without its newline (a run killed while
    writing it, or one writing it now), lines that do not start as a row, and lines holding
    more than one row (a torn line an older version appended to) are left out: their tasks
    are computed again. (A quote inside a string is escaped, so ``{"task_id": `` occurs in a
    line once per row.)"""
    lines: dict[str, bytes] = {}
    if not cache.is_file():
        return lines
    with open(cache, "rb") as f:
        for line in f:
            head = line[: line.find(b",")]  # {"task_id": "...", ...}: the id leads each line
            whole = line.endswith(b"\n") and line.count(_ROW) == 1
            try:
                tid = json.loads(head + b"}")["task_id"] if whole else None
            except (ValueError, TypeError, KeyError):
                tid = None
            if isinstance(tid, str):
                lines[tid] = line
    return lines


_ROW = b'{"task_id": '


def _decoded(line: bytes) -> dict | None:
    """A cache line's row, or None when it does not decode (a damaged line: computed again)."""
    try:
        return _task_row(line)
    except (ValueError, UnicodeDecodeError):
        return None


def _append_line(cache: Path, line: bytes) -> None:
    """Append one whole line under the file's lock (concurrent runs share the cache). A tail
    with no newline was left by a run killed mid-line (no writer holds the lock): it is cut
    off first, so the new line does not continue it."""
    with open(cache, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        end = f.seek(0, os.SEEK_END)
        whole = _last_newline_end(cache, end)
        if whole != end:
            f.truncate(whole)
        f.write(line)
        f.flush()


def _last_newline_end(cache: Path, end: int, chunk: int = 1 << 20) -> int:
    """The offset just after the last newline before ``end`` (0 when there is none)."""
    with open(cache, "rb") as f:
        if end == 0:
            return 0
        f.seek(end - 1)
        if f.read(1) == b"\n":  # the usual case: one byte read, not the last MiB
            return end
        pos = end
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            block = f.read(pos - start)
            at = block.rfind(b"\n")
            if at >= 0:
                return start + at + 1
            pos = start
    return 0


class LazyOutputs(dict):
    """A phase's ``{"t": [...], "out": [...]}`` whose ``out`` is decoded when first read
    (thread-safe), by the worker that scores a sample of the task: the scorer's workers start
    at once instead of after the whole cache is decoded, and a sample that fails its base
    tests never needs the plus outputs (HumanEval/130's are 124 MB of JSON: 0.9 s)."""

    def __init__(self, times: list, text: str, start: int, end: int) -> None:
        super().__init__(t=times)
        self._text: str | None = text
        self._span = (start, end)
        self._lock = threading.Lock()

    def __missing__(self, key: str):
        if key != "out":
            raise KeyError(key)
        with self._lock:
            if not dict.__contains__(self, "out"):
                assert self._text is not None
                value, end = codec.loads_at(self._text, self._span[0])
                if end != self._span[1]:
                    raise codec.DecodeError("expected-output cache: outputs end early")
                self["out"], self._text = value, None
        return dict.__getitem__(self, "out")


_BASE, _PLUS, _OUT, _TIMES = '"base": {"out": ', ', "plus": {"out": ', "{", ', "t": '


def _lazy_phase(text: str, out_at: int, stop: int) -> LazyOutputs | None:
    """The phase whose outputs start at ``out_at`` and whose ``"t"`` is the last before
    ``stop`` (the phase's closing brace), or None when the text is not shaped so."""
    times_at = text.rfind(_TIMES, out_at, stop)
    if times_at < 0:
        return None
    times, end = codec.loads_at(text, times_at + len(_TIMES))
    if end != stop:
        return None
    return LazyOutputs(times, text, out_at, times_at)


def _task_row(line: bytes) -> dict:
    """A cache line (as ``json.dumps`` wrote it: ``{"task_id": ..., "base": {"out": [...],
    "t": [...]}, "plus": {...}}``) with each phase's times decoded and its outputs decoded
    when first read (``LazyOutputs``). Only object keys are followed by ``": "`` in the
    encoding (a quote inside a string is escaped), so the keys found here are the row's own.
    A line of any other shape is decoded whole."""
    text = line.decode("utf-8")
    base_at, plus_at = text.find(_BASE), text.find(_PLUS)
    end = len(text.rstrip()) - 2  # the plus phase's closing brace, before the row's
    if 0 < base_at < plus_at and text.endswith("}}", 0, end + 2):
        base = _lazy_phase(text, base_at + len(_BASE), plus_at - 1)
        plus = _lazy_phase(text, plus_at + len(_PLUS), end)
        if base is not None and plus is not None:
            return {"base": base, "plus": plus}
    row = codec.loads_row(text)
    return {"base": row["base"], "plus": row["plus"]}
