"""The plain-data codec both sides of the box share (shipped into the box as a file, with
``tagdecode`` beside it: standard library only): the runner encodes what a function computed
(here), the scorer decodes it, bounded (``tagdecode``, and ``result_decode``, which stays outside
the box). The decoding names are re-exported here: ``codec`` is the one name for the format.

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

# The box writes JSON through json's C accelerator directly (``tagdecode`` says why). The
# scorer's bounded decoders (``result_decode``) still come from json (outside the box).
try:
    import _json
except ImportError:  # an interpreter built without it: json's pure-Python code
    _json = None  # type: ignore[assignment]

if __package__:  # the scorer's side: the package
    from reflectioncoder.eval.sandbox import tagdecode
else:  # in the box: shipped beside this file as a top-level module
    import tagdecode  # type: ignore[no-redef]

COLLISIONS_ALLOWED, MAX_NUMPY_BYTES, TAGS = (
    tagdecode.COLLISIONS_ALLOWED,
    tagdecode.MAX_NUMPY_BYTES,
    tagdecode.TAGS,
)
DecodeError, Digest, Opaque = tagdecode.DecodeError, tagdecode.Digest, tagdecode.Opaque
build_tag, clip, tag_hook = tagdecode.build_tag, tagdecode.clip, tagdecode.tag_hook
loads_at, loads_row = tagdecode.loads_at, tagdecode.loads_row

__all__ = [  # the encoding here; the decoding re-exported from ``tagdecode``
    "BIG_STR",
    "COLLISIONS_ALLOWED",
    "HUGE_ITEMS",
    "HUGE_MIN_LEN",
    "MAX_NUMPY_BYTES",
    "TAGS",
    "DecodeError",
    "Digest",
    "Opaque",
    "build_tag",
    "clip",
    "dumps",
    "encode",
    "encode_output",
    "loads_at",
    "loads_row",
    "tag_hook",
]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time in every sandboxed run
    from typing import Any

_BIG_INT_BITS = 8000  # past ~4300 digits int <-> str is limited (and slow); use hex instead


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
