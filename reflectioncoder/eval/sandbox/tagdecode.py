"""The codec's decoding side (shipped into the box as a file beside ``codec``: standard library
only): tagged JSON back to values. The scorer decodes the box's result lines with it (bounded,
through ``result_decode``); the box reads its job with it, and ``codec`` reads a huge output's
elements through it. ``codec`` re-exports what callers use, so ``codec`` stays the one name for
the format; the tags are described there.
"""

from __future__ import annotations

import binascii  # not base64: that imports re, costly in every sandboxed start-up
import math

# The box reads JSON through json's C accelerator directly: json's own modules import re (5 ms
# of CPU in every box's start-up, a fifth of it).
try:
    import _json
except ImportError:  # an interpreter built without it: json's pure-Python code
    _json = None  # type: ignore[assignment]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time in every sandboxed run
    from typing import Any


class DecodeError(ValueError):
    """The untrusted side sent something that is not our plain-data encoding."""


def _unb64(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise DecodeError(f"bad base64: {exc}") from None


TAGS = {
    "$tuple",
    "$set",
    "$frozenset",
    "$dict",
    "$bytes",
    "$bytearray",
    "$complex",
    "$float",
    "$int",
    "$np",
    "$ndarray",
    "$opaque",
    "$sha",
}


class Digest:
    """A big string known by its sha256: equal only to a Digest of the same string."""

    __slots__ = ("key",)

    def __init__(self, digest: str, length: int) -> None:
        self.key = (digest, length)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and other.key == self.key

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"<str of {self.key[1]} chars, sha256 {self.key[0][:12]}>"


class Opaque:
    """A value the untrusted side could not express as plain data: equal to nothing."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<opaque {self.type_name}>"


def _list(body: Any) -> list:
    if type(body) is not list:
        raise DecodeError("expected a list")
    return body


def _str(body: Any) -> str:
    if type(body) is not str:
        raise DecodeError("expected a string")
    return body


def tag_hook(obj: dict) -> Any:
    """json.loads object hook: one-key ``$`` objects are tags (their bodies are already decoded:
    the parser works bottom-up); other objects stay as they are (result rows, job fields)."""
    if len(obj) != 1:
        return obj
    ((tag, body),) = obj.items()
    if not tag.startswith("$"):
        return obj
    if tag not in TAGS:
        raise DecodeError(f"unknown tag {clip(tag)!r}")
    try:
        return build_tag(tag, body)
    except DecodeError:
        raise
    except (TypeError, ValueError, OverflowError, MemoryError) as exc:
        raise DecodeError(f"{tag}: {clip(str(exc))}") from None


COLLISIONS_ALLOWED = 64  # distinct members of one set/dict that may share a hash
MAX_NUMPY_BYTES = 1 << 28  # what one decoded numpy array may allocate


def _float_tag(text: str) -> float:
    if text not in ("nan", "inf", "-inf"):
        raise DecodeError(f"bad float {clip(text)!r}")
    return float(text)


def _dict_tag(items: list) -> dict:
    for pair in items:
        if type(pair) is not list or len(pair) != 2:
            raise DecodeError("$dict items must be [key, value] pairs")
    _distinct_hashes([k for k, _ in items])
    return dict(items)


def _complex_tag(re: Any, im: Any) -> complex:
    if type(re) is not float or type(im) is not float:
        raise DecodeError("complex parts must be floats")
    return complex(re, im)


def _sha_tag(digest: Any, length: Any) -> Digest:
    if type(length) is not int or not 0 <= length < 1 << 62:
        raise DecodeError("$sha length must be a small int")
    return Digest(clip(_str(digest)), length)


# Tags whose body is a string, a list, or a pair, and what each builds from it. "$int" is hex:
# a power-of-two base parses in linear time, no digit limit needed.
_FROM_TEXT = {
    "$bytes": _unb64,
    "$bytearray": lambda text: bytearray(_unb64(text)),
    "$int": lambda text: int(text, 16),
    "$opaque": lambda text: Opaque(clip(text)),
    "$float": _float_tag,
}
_FROM_LIST = {
    "$tuple": tuple,
    "$set": lambda items: set(_distinct_hashes(items)),
    "$frozenset": lambda items: frozenset(_distinct_hashes(items)),
    "$dict": _dict_tag,
}


def build_tag(tag: str, body: Any) -> Any:
    """One tag's value from its already-decoded body. Bounded: nothing here allocates more
    than a small multiple of the line, and no set or dict is built from members whose hashes
    collide (a crafted set of equal-hash members would cost quadratic time)."""
    if tag in _FROM_TEXT:
        return _FROM_TEXT[tag](_str(body))
    items = _list(body)
    if tag in _FROM_LIST:
        return _FROM_LIST[tag](items)
    if len(items) != 2:
        raise DecodeError(f"{tag} takes two items")
    if tag == "$complex":
        return _complex_tag(*items)
    if tag == "$sha":
        return _sha_tag(*items)
    return _build_numpy(tag, *items)


def _build_numpy(tag: str, dtype_name: Any, values: Any) -> Any:
    import numpy

    dtype = numpy.dtype(_str(dtype_name)[:32])
    if dtype.kind not in "biufcUSO" or dtype.subdtype is not None:  # no structured/void dtypes
        raise DecodeError(f"dtype {dtype} not allowed")
    if dtype.itemsize * _leaves(values, dtype.itemsize) > MAX_NUMPY_BYTES:
        raise DecodeError(f"{tag}: {dtype} array over {MAX_NUMPY_BYTES >> 20} MiB")
    if tag == "$np":
        return dtype.type(values)
    return numpy.array(values, dtype=dtype)


def _leaves(values: Any, itemsize: int) -> int:
    """How many elements a nested list holds (counted only where the dtype is wide: narrow
    dtypes allocate no more than the line already holds)."""
    if itemsize <= 16 or type(values) is not list:
        return 1
    count, stack = 0, [values]
    while stack:
        v = stack.pop()
        if type(v) is list:
            stack.extend(v)
        else:
            count += 1
    return count


def _distinct_hashes(items: list) -> list:
    """``items``, after checking that at most COLLISIONS_ALLOWED of them share a hash with
    another (set and dict members are distinct, so honest data shares almost none)."""
    if len(items) > COLLISIONS_ALLOWED and (
        len(items) - len(set(map(hash, items))) > COLLISIONS_ALLOWED
    ):
        raise DecodeError("set or dict members with colliding hashes")
    return items


def clip(text: str, limit: int = 200) -> str:
    """Untrusted text cut to ``limit`` characters before it goes anywhere."""
    return text if len(text) <= limit else text[:limit] + "..."


def loads_row(text: str | bytes) -> Any:
    """Parse one JSON line, decoding tags on the way (C parser; Python only for tags).
    Raises DecodeError (a ValueError) on anything that is not our encoding."""
    if type(text) is not str:
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"not JSON: {exc}") from None
    value, end = loads_at(text, len(text) - len(text.lstrip(" \t\n\r")))
    if text[end:].strip(" \t\n\r"):
        raise DecodeError("not JSON: extra data after the value")
    return value


def loads_at(text: str, index: int) -> tuple[Any, int]:
    """The JSON value that starts at ``text[index]``, tags decoded, and the index where it
    ends (a field of a long trusted line read without parsing the rest)."""
    try:
        if _json is None:
            import json

            return json.JSONDecoder(object_hook=tag_hook).raw_decode(text, index)
        return _json.make_scanner(_ScanContext())(text, index)  # per call: its own memo
    except DecodeError:
        raise
    except StopIteration as stop:  # the C scanner's "no value at this index"
        raise DecodeError(f"not JSON: no value at {stop.value}") from None
    except (ValueError, RecursionError, TypeError) as exc:
        raise DecodeError(f"not JSON: {exc}") from None


class _ScanContext:
    """What ``_json.make_scanner`` reads from a decoder: json.loads's defaults, the tag hook."""

    strict = True
    object_hook = staticmethod(tag_hook)
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(
        {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.__getitem__
    )
