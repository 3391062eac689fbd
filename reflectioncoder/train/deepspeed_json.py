"""The user's DeepSpeed JSON, read as DeepSpeed reads it (plain JSON, else hjson: comments and
trailing commas; a key given twice refused) and checked (``deepspeed_reads.py``): every problem
is one ``ConfigError`` naming the file, the line and column, and the key path."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from reflectioncoder.errors import ConfigError
from reflectioncoder.train.deepspeed_reads import deepspeed_json_problem


def read_deepspeed_json(path: str | Path) -> dict[str, Any]:
    """The user's DeepSpeed JSON, checked against what the installed DeepSpeed reads: a key it
    does not know (a typo it would ignore, or stop on deep in ``deepspeed.initialize``), or a
    value its config models refuse, is one ``ConfigError`` naming the file, the line and the key
    path, with the key meant when one is close. Read once per file version."""
    stat = Path(path).stat()
    return copy.deepcopy(_checked_json(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _checked_json(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    field = "distributed.deepspeed_config"
    try:
        data = _parse(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not valid JSON: {err.msg}", file=path, line=err.lineno,
                          column=err.colno, field=field) from None  # fmt: skip
    except _DuplicateKey as err:  # DeepSpeed refuses a file with one; a dict keeps the last
        line, column = _line_of(text, err.key, nth=2)
        raise ConfigError("given twice (DeepSpeed refuses duplicate keys)", file=path,
                          line=line, column=column, field=err.key) from None  # fmt: skip
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object, got {type(data).__name__}", file=path,
                          field=field)  # fmt: skip
    problem = deepspeed_json_problem(data)
    if problem is not None:
        keys, reason = problem
        line, column = _line_of_path(text, keys)
        raise ConfigError(reason, file=path, line=line, column=column,
                          field=".".join(map(str, keys)) or field)  # fmt: skip
    return data


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _parse(text: str) -> Any:
    """The JSON as DeepSpeed reads its config file: hjson (// and # comments, trailing commas)
    when it is not plain JSON; a key given twice in one object raises ``_DuplicateKey``."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError:
        try:
            import hjson  # DeepSpeed's own dependency

            return hjson.loads(text, object_pairs_hook=_no_duplicates)
        except _DuplicateKey:
            raise
        except (ImportError, ValueError):  # not hjson either (HjsonDecodeError is a ValueError)
            pass
        raise  # the JSON parser's error: its line and message


def _line_of(text: str, key: object, nth: int = 1) -> tuple[int | None, int | None]:
    """Where ``"key"`` appears in the JSON text the ``nth`` time (1-based line and column)."""
    at = -1
    for _ in range(nth):
        at = text.find(json.dumps(str(key)), at + 1)
    if at < 0:
        return None, None
    return text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)


def _line_of_path(text: str, keys: tuple) -> tuple[int | None, int | None]:
    """Where the key path ``keys`` appears in the JSON text: each key looked for after the
    section before it (``flops_profiler.enabled``, not the first "enabled" of the file)."""
    at = 0
    for key in keys:
        found = text.find(json.dumps(str(key)), at)
        if found < 0:
            break
        at = found
    else:
        if keys:
            return text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
    return _line_of(text, keys[-1]) if keys else (None, None)
