"""The plain-data codec both sides of the box share (shipped into the box as a file: standard
library only): the runner encodes what a function computed, the scorer decodes it, bounded (with
``result_decode``, which stays outside the box).

JSON with tags for what JSON lacks: ``{"$tuple": [...]}``, ``$set``, ``$frozenset``,
``$dict`` (a list of key/value pairs: keys need not be strings), ``$bytes`` (base64),
``$bytearray``, ``$complex``, ``$float`` ("nan", "inf", "-inf"), ``$int`` (hex, for huge
ints), ``$sha`` (sha256 and length of a top-level string over 64 KiB: equal strings have equal
digests, and only the digest crosses the pipe), ``$np`` / ``$ndarray`` (numpy scalar / array:
dtype and values) and ``$opaque`` (a type name: a value that is not plain data; it equals
nothing). Subclasses of plain types (bool, int, float, str, list, tuple, dict, set) are
encoded as their base type's value, read through the base type's own methods, so an
overridden ``__eq__`` never reaches the scorer.
"""

from __future__ import annotations

import binascii  # not base64: that imports re, costly in every sandboxed start-up
import math
import sys

# The box writes and reads JSON through json's C accelerator directly: json's own modules
# import re (5 ms of CPU in every box's start-up, a fifth of it). The scorer's bounded
# decoders (``result_decode``) still come from json (imported when first used, outside the box).
try:
    import _json
except ImportError:  # an interpreter built without it: json's pure-Python code
    _json = None  # type: ignore[assignment]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time in every sandboxed run
    from typing import Any

_BIG_INT_BITS = 8000  # past ~4300 digits int <-> str is limited (and slow); use hex instead


class DecodeError(ValueError):
    """The untrusted side sent something that is not our plain-data encoding."""


def encode(value: Any, _depth: int = 0) -> Any:
    """Python value -> JSON-able tagged structure (never raises: odd values become opaque)."""
    if _depth > 200:
        return {"$opaque": "too deep"}
    t = type(value)
    if value is None or t is str:
        return value
    if t is bool:
        return value
    if t is int:
        if value.bit_length() > _BIG_INT_BITS:
            return {"$int": format(value, "x")}
        return value
    if t is float:
        if math.isfinite(value):
            return value
        return {"$float": "nan" if value != value else ("inf" if value > 0 else "-inf")}
    d = _depth + 1
    if t is list or t is tuple:
        items = list(t.__iter__(value))
        flat = _flat_scalars(items)
        if flat is None:
            flat = [encode(v, d) for v in items]
        return flat if t is list else {"$tuple": flat}
    if t is dict:
        return {"$dict": [[encode(k, d), encode(v, d)] for k, v in dict.items(value)]}
    if t is set or t is frozenset:
        tag = "$set" if t is set else "$frozenset"
        return {tag: [encode(v, d) for v in t.__iter__(value)]}
    if t is complex:
        return {
            "$complex": [
                encode(complex.__getattribute__(value, "real")),
                encode(complex.__getattribute__(value, "imag")),
            ]
        }
    if t is bytes:
        return {"$bytes": _b64(value)}
    if t is bytearray:
        return {"$bytearray": _b64(bytes(value))}
    numpy = _numpy_if_loaded()
    if numpy is not None:
        if t is numpy.ndarray:
            try:
                return {"$ndarray": [str(value.dtype), encode(value.tolist(), d)]}
            except Exception:
                return {"$opaque": "ndarray"}
        if issubclass(t, numpy.generic):
            try:
                return {"$np": [str(value.dtype), encode(value.item(), d)]}
            except Exception:
                return {"$opaque": t.__name__}
    # Subclasses: the base type's value, read with the base type's methods.
    for base in (bool, int, float, str, list, tuple, dict, set, frozenset, bytes):
        if issubclass(t, base):
            try:
                plain = _to_base(base, value)
            except Exception:
                return {"$opaque": t.__name__}
            return encode(plain, d)
    return {"$opaque": getattr(t, "__name__", "?")}


def _flat_scalars(items: list) -> list | None:
    """``items`` itself when it holds only JSON-native scalars (str, small int, finite float):
    checked with C-level loops, so big flat outputs cost little to encode."""
    kinds = set(map(type, items))
    if not kinds <= {int, str, float}:
        return None
    if float in kinds and not all(map(math.isfinite, (x for x in items if type(x) is float))):
        return None
    if int in kinds:
        ints = [x for x in items if type(x) is int]
        if ints and max(map(int.bit_length, ints)) > _BIG_INT_BITS:
            return None
    return items


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise DecodeError(f"bad base64: {exc}") from None


def _to_base(base: type, value: Any) -> Any:
    if base is bool:
        return bool(int.__int__(value))
    if base is int:
        return int.__int__(value)
    if base is float:
        return float.__float__(value)
    if base is str:
        return str.__str__(value)
    if base is dict:
        return dict(list(dict.items(value)))
    return base(list(base.__iter__(value)))


def _numpy_if_loaded():
    return sys.modules.get("numpy")


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
BIG_STR = 1 << 16


HUGE_ITEMS = 5_000_000  # a list/tuple output past this many elements travels as a digest
HUGE_MIN_LEN = 100_000  # ... when it holds more than this many at its top level


def encode_output(value: Any) -> Any:
    """``encode``, but a big top-level string, or a huge list/tuple (millions of elements, where
    encoding and shipping would cost more than computing), travels as a digest. The digest of a
    container hashes each element's ``repr``: equal values of the same element types agree
    (values that are equal across types, like 1 and 1.0, do not: the price of not shipping)."""
    import hashlib

    value = _plain_sequence(value)
    t = type(value)
    if t is str and len(value) > BIG_STR:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return {"$sha": [digest, len(value)]}
    if (t is list or t is tuple) and len(value) > HUGE_MIN_LEN:
        first = value[0]
        inner = len(first) if type(first) in (list, tuple, str) else 1
        if len(value) * max(inner, 1) > HUGE_ITEMS:
            h = hashlib.sha256(t.__name__.encode() + b"\0")
            for item in t.__iter__(value):
                text = repr(item) if type(item) in _SCALARS else _item_text(item)
                h.update(text.encode("utf-8", "surrogatepass"))
                h.update(b"\0")
            return {"$sha": [h.hexdigest(), len(value)]}
    return encode(value)


_SCALARS = (bool, int, float, str, type(None))


def _builtin_repr_only(item: Any, depth: int = 0) -> bool:
    """Whether ``repr(item)`` calls no code of the program's: plain scalars, in lists/tuples."""
    t = type(item)
    if t in _SCALARS:
        return True
    if (t is list or t is tuple) and depth < 8:
        return all(_builtin_repr_only(v, depth + 1) for v in t.__iter__(item))
    return False


def _item_text(item: Any) -> str:
    """One element of a huge output, as its digest reads it: the repr of the plain data it
    encodes to (an object's own ``__repr__`` could copy the expected element's text and so
    forge equality; an opaque one reads ``<opaque NAME>``, which no plain value's repr is)."""
    if _builtin_repr_only(item):
        return repr(item)
    import json

    return repr(json.loads(json.dumps(encode(item)), object_hook=tag_hook))


def _plain_sequence(value: Any) -> Any:
    """A str/list/tuple subclass as its base type's value (read with the base type's methods,
    as ``encode`` reads it), so that a big one takes the digest path too; anything else as is."""
    t = type(value)
    if t is str or t is list or t is tuple or not issubclass(t, (str, list, tuple)):
        return value
    numpy = _numpy_if_loaded()
    if numpy is not None and issubclass(t, numpy.generic):  # numpy.str_: encode's $np
        return value
    base = str if issubclass(t, str) else list if issubclass(t, list) else tuple
    try:
        return _to_base(base, value)
    except Exception:
        return value  # encode makes it opaque


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


def _not_plain(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))`` of encoded data, through the C encoder
    (the same bytes: ASCII, no circular check: ``encode`` builds a fresh tree)."""
    if _json is None:
        import json

        return json.dumps(value, separators=(",", ":"))
    encoder = _json.make_encoder(
        None, _not_plain, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return "".join(encoder(value, 0))
