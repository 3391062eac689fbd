"""Generated samples kept as they are made (``evaluate --model``): ``OUT.partial`` beside the
samples file gets each task's rows the moment its batch is done, flushed to disk. A run stopped
by Ctrl-C, a kill or a crash (a whole HumanEval on a CPU is half an hour of generation) is
continued by the same command: the tasks found there are not generated again. The first line
records what generated them (the model's files, backend, prompt format, decoding); rows made
another way are never mixed in. It is removed once the evaluation's result is written."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from reflectioncoder.errors import atomic_write_text
from reflectioncoder.eval.request import EvalRequest

_MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model")


def generation_key(req: EvalRequest) -> dict:
    """What makes two generations the same: the model (its files' names, sizes and times, so a
    model trained again in the same folder is another), backend, prompts and decoding."""
    key = {
        "task": req.task,
        "model": req.model,
        "backend": req.backend,
        "base_url": req.base_url,
        "prompt_format": req.prompt_format,
        "max_new_tokens": req.decoding.max_new_tokens,
        "temperature": req.decoding.temperature,
        "top_p": req.decoding.top_p,
        "n": req.decoding.n,
        "seed": req.decoding.seed,
    }
    folder = Path(req.model or "")
    if req.backend != "openai" and folder.is_dir():
        key["model"] = str(folder.resolve())  # `./m` and `m` are one model
        stats = [
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for pattern in _MODEL_FILES
            for f in sorted(folder.glob(pattern))
        ]
        key["model_files"] = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    return key


class SampleJournal:
    """``OUT.partial``: the generation's key, then one sample row a line."""

    def __init__(self, out: Path, key: dict) -> None:
        self.out = out
        self.path = out.with_name(out.name + ".partial")
        self.key = key
        done: dict[tuple[str | None, str], list[dict]] = {}
        for row in self._read():
            done.setdefault((row.get("language"), row["task_id"]), []).append(row)
        # A task is kept with all its n samples (a kill may cut its lines short).
        self.done = {task: rows for task, rows in done.items() if len(rows) == key["n"]}
        self._kept = [row for rows in self.done.values() for row in rows]
        self.saved = len(self._kept)  # samples on disk, for what a Ctrl-C says
        self._file = None  # opened at the first new row: a run that made none leaves no file

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("key") != self.key:
            print(
                f"{self.path}: samples of another generation (model, its files or settings "
                "differ): generating from the start",
                file=sys.stderr,
            )
            return []
        rows = []
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # the line a kill cut short, the last one written
            if not isinstance(row, dict) or not isinstance(row.get("task_id"), str):
                break
            rows.append(row)
        print(
            f"{self.path}: continuing an interrupted run: {len(rows)} samples kept",
            file=sys.stderr,
        )
        return rows

    def rows(self, task_id: str, language: str | None = None) -> list[dict] | None:
        return self.done.get((language, task_id))

    def add(self, rows: list[dict]) -> None:
        """One task's rows, on disk before the next batch starts."""
        if self._file is None:  # rewritten whole: a torn line or another generation's rows go
            lines = [{"key": self.key}, *self._kept]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in lines))
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write("".join(json.dumps(r) + "\n" for r in rows))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.saved += len(rows)

    def write_samples(self, rows: list[dict]) -> None:
        """All samples made: the samples file, written whole. The journal stays until the
        result is written (``remove``): a run stopped while scoring generates nothing again."""
        atomic_write_text(self.out, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"samples: {self.out}", file=sys.stderr)

    def remove(self) -> None:
        self.__exit__()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SampleJournal:
        return self

    def __exit__(self, kind=None, stop=None, traceback=None) -> None:
        if self._file is not None:  # kept on disk unless finished: the next run continues
            self._file.close()
            self._file = None
        if (
            kind is not None
            and issubclass(kind, KeyboardInterrupt)
            and self.saved
            and not str(stop)
        ):
            # Ctrl-C (or SIGTERM) says what was kept and how to go on, not "interrupted" alone
            raise kind(
                f"{self.saved} samples kept in {self.path}: the same command continues from them"
            ) from None
