"""Decoding what the untrusted side sends, on the trusted side (not shipped into the box):
``read_result_row``, a result line decoded at a cost bounded by its length and checked
against the runner's schema; ``loads_result`` without the schema; ``decode`` for a tagged
structure already parsed. Each raises ``codec.DecodeError`` (a ValueError) and nothing else.
"""

from __future__ import annotations

import sys
from typing import Any

from reflectioncoder.eval.sandbox.tagdecode import TAGS, DecodeError, build_tag, clip, tag_hook

__all__ = ["MAX_LINE", "decode", "loads_result", "read_result_row"]


def decode(data: Any, _depth: int = 0) -> Any:
    """Tagged structure -> Python value; raises DecodeError on anything unexpected."""
    if _depth > 220:
        raise DecodeError("nested too deeply")
    t = type(data)
    if data is None or t in (bool, int, float, str):
        return data
    d = _depth + 1
    if t is list:
        return [decode(v, d) for v in data]
    if t is not dict or len(data) != 1:
        raise DecodeError(f"unexpected {t.__name__}")
    ((tag, body),) = data.items()
    if tag not in TAGS:
        raise DecodeError(f"unknown tag {clip(str(tag))!r}")
    try:
        if type(body) is list:
            body = [decode(v, d) for v in body]
        return build_tag(tag, body)
    except DecodeError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        raise DecodeError(f"{tag}: {clip(str(exc))}") from None


MAX_LINE = 64 << 20  # bytes of one result line from the untrusted side
MAX_INT_DIGITS = 4300  # Python's own default int-from-str limit; bigger ints travel as $int


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1:
        raise DecodeError(f"an integer of {len(text)} digits (over {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not plain data (non-finite floats travel as $float)")


_RESULT_DECODERS: list = []  # the fast one, then the one with the digit hook (first use)


def _result_decoders() -> list:
    if not _RESULT_DECODERS:
        import json

        hooks = {"object_hook": tag_hook, "parse_constant": _no_constant}
        _RESULT_DECODERS.append(json.JSONDecoder(**hooks))
        _RESULT_DECODERS.append(json.JSONDecoder(**hooks, parse_int=_bounded_int))
    return _RESULT_DECODERS


def loads_result(line: bytes) -> Any:
    """Decode one result line written by the untrusted side, at a cost bounded by its length:
    the line is capped before parsing; integers are limited to MAX_INT_DIGITS digits (by the C
    parser itself when Python's own limit is in force, else by a hook); big allocations (numpy
    dtypes) are refused before they are made; sets and dicts whose members collide in hash
    are refused instead of built. Raises DecodeError (a ValueError) and nothing else."""
    if len(line) > MAX_LINE:
        raise DecodeError(f"a line of {len(line)} bytes (over {MAX_LINE >> 20} MiB)")
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    decoder = _result_decoders()[0 if 0 < limit <= MAX_INT_DIGITS else 1]
    try:
        return decoder.decode(line.decode("utf-8"))
    except DecodeError:
        raise
    except (ValueError, RecursionError, TypeError, MemoryError, OverflowError) as exc:
        raise DecodeError(f"not JSON: {clip(str(exc))}") from None


# The result rows the runner writes: these fields with these types, ``out`` any plain data.
ROW_FIELDS = {"phase": str, "i": int, "error": str, "load_error": str, "done": bool, "loaded": bool}


def read_result_row(line: bytes) -> dict:
    """A result line decoded (bounded, see ``loads_result``) and schema-checked: a mapping of
    known fields with the types the runner writes, ``out`` being any plain data. Raises
    DecodeError (a ValueError) and nothing else."""
    row = loads_result(line)
    if type(row) is not dict:
        raise DecodeError(f"a result row must be an object, not {type(row).__name__}")
    for key, value in row.items():
        if key != "out" and type(value) is not ROW_FIELDS.get(key):
            raise DecodeError(f"field {clip(str(key), 40)!r}: unexpected")
    if "phase" not in row:
        raise DecodeError("a result row names its phase")
    return row
