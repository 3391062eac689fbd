"""The sandbox side of a Python test run, and the plain-data codec both sides share.

This file is copied into the sandbox and run there as a script (standard library only). It
reads one job from stdin, runs the function on every input (EvalPlus semantics: each phase in
fresh globals, a time limit per input (CPU time), stdio swallowed, EvalPlus's reliability guard),
and writes one JSON line per input to the result stream: the output it computed, encoded as
plain data. It never sees an expected output, so nothing it prints can be a verdict: the
scorer, outside, decodes the outputs and compares them.

Codec: JSON with tags for what JSON lacks: ``{"$tuple": [...]}``, ``$set``, ``$frozenset``,
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
import json
import math
import sys

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
    import sys

    return sys.modules.get("numpy")


_TAGS = {
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


def encode_output(value: Any) -> Any:
    """``encode``, but a big top-level string, or a huge list/tuple (millions of elements, where
    encoding and shipping would cost more than computing), travels as a digest. The digest of a
    container hashes each element's ``repr``: equal values of the same element types agree
    (values that are equal across types, like 1 and 1.0, do not: the price of not shipping)."""
    import hashlib

    t = type(value)
    if t is str and len(value) > BIG_STR:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return {"$sha": [digest, len(value)]}
    if (t is list or t is tuple) and len(value) > 100_000:
        first = value[0]
        inner = len(first) if type(first) in (list, tuple, str) else 1
        if len(value) * max(inner, 1) > HUGE_ITEMS:
            h = hashlib.sha256(t.__name__.encode() + b"\0")
            for item in t.__iter__(value):
                h.update(repr(item).encode("utf-8", "surrogatepass"))
                h.update(b"\0")
            return {"$sha": [h.hexdigest(), len(value)]}
    return encode(value)


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
    if tag not in _TAGS:
        raise DecodeError(f"unknown tag {_clip(str(tag))!r}")
    try:
        if type(body) is list:
            body = [decode(v, d) for v in body]
        return _build(tag, body)
    except DecodeError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        raise DecodeError(f"{tag}: {_clip(str(exc))}") from None


def _list(body: Any) -> list:
    if type(body) is not list:
        raise DecodeError("expected a list")
    return body


def _str(body: Any) -> str:
    if type(body) is not str:
        raise DecodeError("expected a string")
    return body


def _tag_hook(obj: dict) -> Any:
    """json.loads object hook: one-key ``$`` objects are tags (their bodies are already decoded:
    the parser works bottom-up); other objects stay as they are (result rows, job fields)."""
    if len(obj) != 1:
        return obj
    ((tag, body),) = obj.items()
    if not tag.startswith("$"):
        return obj
    if tag not in _TAGS:
        raise DecodeError(f"unknown tag {_clip(tag)!r}")
    try:
        return _build(tag, body)
    except DecodeError:
        raise
    except (TypeError, ValueError, OverflowError, MemoryError) as exc:
        raise DecodeError(f"{tag}: {_clip(str(exc))}") from None


COLLISIONS_ALLOWED = 64  # distinct members of one set/dict that may share a hash
MAX_NUMPY_BYTES = 1 << 28  # what one decoded numpy array may allocate


def _build(tag: str, body: Any) -> Any:
    """One tag's value from its already-decoded body. Bounded: nothing here allocates more
    than a small multiple of the line, and no set or dict is built from members whose hashes
    collide (a crafted set of equal-hash members would cost quadratic time)."""
    if tag in ("$bytes", "$bytearray", "$float", "$int", "$opaque"):
        text = _str(body)
        if tag == "$bytes":
            return _unb64(text)
        if tag == "$bytearray":
            return bytearray(_unb64(text))
        if tag == "$int":
            return int(text, 16)  # a power-of-two base: linear time, no digit limit needed
        if tag == "$opaque":
            return Opaque(_clip(text))
        if text not in ("nan", "inf", "-inf"):
            raise DecodeError(f"bad float {_clip(text)!r}")
        return float(text)
    items = _list(body)
    if tag == "$tuple":
        return tuple(items)
    if tag == "$set":
        return set(_distinct_hashes(items))
    if tag == "$frozenset":
        return frozenset(_distinct_hashes(items))
    if tag == "$dict":
        for pair in items:
            if type(pair) is not list or len(pair) != 2:
                raise DecodeError("$dict items must be [key, value] pairs")
        _distinct_hashes([k for k, _ in items])
        return dict(items)
    if len(items) != 2:
        raise DecodeError(f"{tag} takes two items")
    if tag == "$complex":
        re, im = items
        if type(re) is not float or type(im) is not float:
            raise DecodeError("complex parts must be floats")
        return complex(re, im)
    if tag == "$sha":
        digest, length = items
        if type(length) is not int or not 0 <= length < 1 << 62:
            raise DecodeError("$sha length must be a small int")
        return Digest(_clip(_str(digest)), length)
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


def _clip(text: str, limit: int = 200) -> str:
    """Untrusted text cut to ``limit`` characters before it goes anywhere."""
    return text if len(text) <= limit else text[:limit] + "..."


def loads_row(text: str | bytes) -> Any:
    """Parse one JSON line, decoding tags on the way (C parser; Python only for tags).
    Raises DecodeError (a ValueError) on anything that is not our encoding."""
    try:
        return json.loads(text, object_hook=_tag_hook)
    except DecodeError:
        raise
    except (ValueError, RecursionError, TypeError) as exc:
        raise DecodeError(f"not JSON: {exc}") from None


MAX_LINE = 64 << 20  # bytes of one result line from the untrusted side
MAX_INT_DIGITS = 4300  # Python's own default int-from-str limit; bigger ints travel as $int


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1:
        raise DecodeError(f"an integer of {len(text)} digits (over {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not plain data (non-finite floats travel as $float)")


_RESULT_DECODER = json.JSONDecoder(object_hook=_tag_hook, parse_constant=_no_constant)
_RESULT_DECODER_SLOW = json.JSONDecoder(
    object_hook=_tag_hook, parse_constant=_no_constant, parse_int=_bounded_int
)


def loads_result(line: bytes) -> Any:
    """Decode one result line written by the untrusted side, at a cost bounded by its length:
    the line is capped before parsing; integers are limited to MAX_INT_DIGITS digits (by the C
    parser itself when Python's own limit is in force, else by a hook); big allocations (numpy
    dtypes) are refused before they are made; sets and dicts whose members collide in hash
    are refused instead of built. Raises DecodeError (a ValueError) and nothing else."""
    if len(line) > MAX_LINE:
        raise DecodeError(f"a line of {len(line)} bytes (over {MAX_LINE >> 20} MiB)")
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    decoder = _RESULT_DECODER if 0 < limit <= MAX_INT_DIGITS else _RESULT_DECODER_SLOW
    try:
        return decoder.decode(line.decode("utf-8"))
    except DecodeError:
        raise
    except (ValueError, RecursionError, TypeError, MemoryError, OverflowError) as exc:
        raise DecodeError(f"not JSON: {_clip(str(exc))}") from None


def dumps(value: Any) -> str:
    """Encode to one line of JSON text."""
    return json.dumps(encode(value), separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """Decode one line of JSON text (raises DecodeError)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    return decode(data)


# ----------------------------------------------------------------------------- sandbox side


def _main() -> None:  # pragma: no cover - runs inside the sandbox
    """Job on stdin -> one result line per input on stdout (see module docstring)."""
    import io
    import os
    import signal
    import sys
    import time

    if "--warm" in sys.argv:  # what the guard patches, imported while waiting for the job
        import faulthandler  # noqa: F401
        import shutil  # noqa: F401
        import subprocess  # noqa: F401
    job = loads_row(sys.stdin.buffer.read())
    sys.path.extend(job.get("sys_path", []))  # started with -S: site-packages without .pth work
    out_fd = os.dup(1)
    write = os.write
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # native writes of the code go nowhere; results go to out_fd only
        os.dup2(null, fd)

    pending: list[bytes] = []
    clock = time.monotonic
    last_flush = [clock()]

    def flush() -> None:
        data = b"".join(pending)
        pending.clear()
        last_flush[0] = clock()
        while data:
            data = data[write(out_fd, data) :]

    def emit(obj: dict, now: bool = False) -> None:
        # batched: a write per line would wake the scorer per input; 20 ms keeps fail-fast
        pending.append((json.dumps(obj, separators=(",", ":")) + "\n").encode())
        if now or clock() - last_flush[0] > 0.02 or len(pending) > 256:
            flush()

    class TimeoutException(Exception):
        pass

    class _WriteOnly(io.StringIO):
        def write(self, s):  # discard: a flood must not grow memory
            return len(s)

        def read(self, *a, **k):
            raise OSError

        readline = readlines = read

        def readable(self, *a, **k):
            return False

    def handler(signum, frame):
        raise TimeoutException("Timed out!")

    record = bool(job.get("record"))
    not_none = bool(job.get("output_not_none"))
    phases = [(p["name"], p["inputs"], p.get("time_limits")) for p in job["phases"]]
    # Limits and ground-truth times are CPU seconds of this process (ITIMER_PROF counts them):
    # they do not grow when the machine is loaded. The scorer's cgroup clock covers children.
    setitimer, signal_fn, perf = signal.setitimer, signal.signal, time.process_time
    if job.get("strict"):
        install_audit_guard(os.getcwd(), job.get("hidden", ()))
    if job.get("guard"):
        _reliability_guard(job.get("memory_bytes"))
    sink, saved = _WriteOnly(), (sys.stdout, sys.stderr, sys.stdin)
    for name, inputs, limits in phases:
        env: dict = {}
        try:
            sys.stdout = sys.stderr = sys.stdin = sink
            try:
                exec(job["code"], env)
                # "exprs": each input is an expression of the program's names (build-data's
                # test calls), evaluated in its namespace; else the entry point is called
                fn = _evaluator(env) if job.get("exprs") else env[job["entry_point"]]
            finally:
                sys.stdout, sys.stderr, sys.stdin = saved
        except BaseException as exc:
            emit({"phase": name, "load_error": type(exc).__name__}, now=True)
            continue
        # the scorer starts the first input's CPU clock here (it measures each input outside)
        emit({"phase": name, "loaded": True}, now=True)
        for i, inp in enumerate(inputs):
            if record:
                inp = __import__("copy").deepcopy(inp)
                t0 = perf()
                out = fn(*inp)
                emit(
                    {
                        "phase": name,
                        "i": i,
                        "t": perf() - t0,
                        "out": encode_output(out is not None if not_none else out),
                    }
                )
                continue
            try:
                signal_fn(signal.SIGPROF, handler)
                setitimer(signal.ITIMER_PROF, limits[i])
                try:
                    # swallow stdio (cheaper than contextlib per input; restored below)
                    sys.stdout = sys.stderr = sys.stdin = sink
                    out = fn(*inp)
                finally:
                    setitimer(signal.ITIMER_PROF, 0)
                    sys.stdout, sys.stderr, sys.stdin = saved
            except BaseException as exc:
                emit({"phase": name, "i": i, "error": type(exc).__name__}, now=True)
                if job.get("fail_fast", True):
                    break
                continue
            emit({"phase": name, "i": i, "out": encode_output(out)})
        emit({"phase": name, "done": True}, now=True)


def _evaluator(env: dict):
    """``fn(expression)``: the expression's value in the program's namespace ``env``."""

    def evaluate(expression: str):
        return eval(expression, env)

    return evaluate


def install_audit_guard(work_dir: str, hidden: list | tuple = ()) -> None:  # pragma: no cover
    """The fallback level's in-process guard, installed before any untrusted code runs.

    A seccomp filter (x86-64, aarch64) makes the kernel refuse every new process or program
    (fork, vfork, clone other than threads, execve), signals to other processes, ptrace and the
    other processes' memory, namespaces, mounts, device nodes and file handles; whatever calls
    them (``_posixsubprocess.fork_exec``, which has no audit event, ctypes, a C extension).
    An audit hook (which Python cannot remove) then refuses: writes, deletes, renames, links
    and mode changes outside ``work_dir``; reads under ``hidden`` (the data and the
    expected-output cache); anything under ``/proc/<pid>`` of another process; device files
    other than the harmless ones; descriptors of directories (so no ``dir_fd=`` call can start
    outside the working directory); path objects other than str and bytes (their ``__fspath__``
    could answer differently twice); sockets; new programs; ctypes; gc's object walks, tracing,
    and rewriting the guard's functions (its state is immutable: tuples, strings and built-in
    functions bound as defaults, so nothing it reads can be patched from Python)."""
    import os
    import posix
    import sys

    seccomp = _deny_processes_by_seccomp()
    import _posixsubprocess  # no audit event: removed, and blocked by seccomp where it runs

    def refuse(*args, **kwargs):
        raise PermissionError("sandbox: new processes are not allowed")

    _posixsubprocess.fork_exec = refuse
    if "subprocess" in sys.modules:
        sys.modules["subprocess"]._fork_exec = refuse
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "pidfd_open"):
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, refuse)
    if not seccomp:  # a C extension could still start programs: the result says so
        sys.stderr.write("sandbox: seccomp unavailable, processes guarded from Python only\n")
    work = os.path.realpath(work_dir)
    hook = _make_audit_hook(work, tuple(os.path.realpath(h) for h in hidden), posix.getpid())
    sys.addaudithook(hook)


_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND
_DIR_FLAGS = 0o200000 | 0o10000000  # O_DIRECTORY | O_PATH (x86-64 and aarch64 values differ:
_DIR_FLAGS_ARM = 0o40000 | 0o10000000  # O_DIRECTORY is 0o40000 on aarch64)
_SAFE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_PATH_EVENTS = (
    "os.remove",
    "os.rmdir",
    "os.rename",
    "os.truncate",
    "os.chmod",
    "os.chown",
    "os.link",
    "os.symlink",
    "os.mkdir",
    "shutil.rmtree",
    "shutil.move",
    "os.utime",
    "os.setxattr",
    "os.removexattr",
)
_DENIED_EVENTS = (
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "subprocess.Popen",
    "os.fork",
    "os.forkpty",
    "pty.spawn",
    "os.startfile",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
    "sys.settrace",
    "sys.setprofile",
    "socket.connect",
    "socket.bind",
    "socket.sendto",
    "socket.sendmsg",
)
_DENIED_IMPORTS = ("_posixsubprocess", "_ctypes", "ctypes", "_testcapi", "_testinternalcapi")


def _resolve(
    path,
    proc_pid: str,
    _type=type,
    _str=str,
    _bytes=bytes,
    _lstat=__import__("posix").lstat,
    _readlink=__import__("posix").readlink,
    _getcwd=__import__("posix").getcwd,
    _fsdecode=__import__("os").fsdecode,
    _perm=PermissionError,
    _oserror=OSError,
):
    """(real path, st_mode or 0) of ``path``, symlinks followed one component at a time (so
    ``/proc/<pid>/root`` and the like are checked before they are followed); raises
    PermissionError on another process's ``/proc`` entry. Depends only on its defaults (a
    tuple: the audit hook refuses to replace them)."""
    if _type(path) is _bytes:
        path = _fsdecode(path)
    if _type(path) is not _str:
        raise _perm("sandbox: only str and bytes paths")
    if not path.startswith("/"):
        path = _getcwd() + "/" + path
    todo = [p for p in path.split("/") if p][::-1]
    done: list = []
    mode, links = 0, 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        if done == ["proc"] and part != proc_pid and part[:1].isdigit():
            raise _perm("sandbox: another process's /proc entry")
        candidate = "/" + "/".join([*done, part])
        try:
            mode = _lstat(candidate).st_mode
        except _oserror:
            mode = 0
            done.append(part)
            continue
        if mode & 0o170000 == 0o120000:  # a symlink
            links += 1
            if links > 40:
                raise _perm("sandbox: too many symlinks")
            target = _readlink(candidate)
            if target.startswith("/"):
                done = []
            todo.extend([p for p in target.split("/") if p][::-1])
            continue
        done.append(part)
    if not done:
        mode = _lstat("/").st_mode
    return "/" + "/".join(done), mode


def _make_audit_hook(work: str, hidden: tuple, pid: int):  # pragma: no cover - sandbox side
    """The audit hook; everything it uses is bound as an immutable default."""
    import os

    dir_flags = _DIR_FLAGS_ARM if os.uname().machine == "aarch64" else _DIR_FLAGS

    def hook(
        event,
        args,
        *,
        _work=work,
        _inside=work + "/",
        _devices=frozenset(_SAFE_DEVICES),
        _hidden=tuple(h + "/" for h in hidden),
        _pid=pid,
        _proc_pid=str(pid),
        _resolve=_resolve,
        _path_events=frozenset(_PATH_EVENTS),
        _two_paths=frozenset(("os.rename", "os.link", "os.symlink", "shutil.move")),
        _fd_events=frozenset(("os.chmod", "os.chown", "os.utime")),
        _denied=frozenset(_DENIED_EVENTS),
        _imports=frozenset(_DENIED_IMPORTS),
        _write_flags=_WRITE_FLAGS,
        _dir_flags=dir_flags,
        _readlink=__import__("posix").readlink,
        _type=type,
        _int=int,
        _str=str,
        _any=any,
        _perm=PermissionError,
        _import_error=ImportError,
    ):
        if event == "open" or event == "os.listdir" or event == "os.scandir":
            path = args[0] if args and args[0] is not None else "."
            if _type(path) is _int:  # a descriptor it holds already (no directory among them)
                return
            real, mode = _resolve(path, _proc_pid)
            if real.startswith(_hidden) or real + "/" in _hidden:
                raise _perm(f"sandbox: {real!r} is hidden")
            if event != "open":
                return
            flags, file_mode = args[2] or 0, args[1]
            writing = (
                _any(c in _str(file_mode) for c in "wax+")
                if file_mode is not None
                else bool(flags & _write_flags)
            )
            if writing and not (real.startswith(_inside) or real in _devices):
                raise _perm(f"sandbox: writing outside the working dir: {real!r}")
            if file_mode is None and (flags & _dir_flags or mode & 0o170000 == 0o040000):
                raise _perm("sandbox: no descriptors of directories (dir_fd)")
            if mode & 0o170000 in (0o020000, 0o060000) and real not in _devices:
                raise _perm(f"sandbox: device {real!r}")
        elif event in _path_events:
            paths = args[:2] if event in _two_paths else args[:1]
            if event == "os.symlink" and _type(paths[0]) is _str and paths[0][:1] != "/":
                # a relative target is relative to the link's own directory
                link_dir = _resolve(paths[1], _proc_pid)[0].rsplit("/", 1)[0]
                paths = (link_dir + "/" + paths[0], paths[1])
            for path in paths:
                if _type(path) is _int and event in _fd_events:
                    path = _readlink(f"/proc/self/fd/{path}")
                elif _type(path) is _int or path is None:
                    continue
                real = _resolve(path, _proc_pid)[0]
                if not (real.startswith(_inside) or real == _work):
                    raise _perm(f"sandbox: {event} outside the working dir: {real!r}")
        elif event in _denied or event.startswith("ctypes."):
            raise _perm(f"sandbox: {event} is not allowed")
        elif event == "import" and args[0] in _imports:
            raise _import_error(f"sandbox: importing {args[0]} is not allowed")
        elif event in ("os.kill", "os.killpg") and args[0] not in (0, _pid):
            raise _perm("sandbox: no signals to other processes")
        elif event == "object.__setattr__" and args[0] is _resolve:
            raise _perm("sandbox: rewriting the guard is not allowed")

    return hook


# seccomp: syscalls refused, by (x86-64, aarch64) number from the kernel's unistd tables
# (None: the machine has no such call; aarch64 has only clone and *at variants)
_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # AUDIT_ARCH_*
_SPECIAL_SYSCALLS = {
    "clone": (56, 220),
    "clone3": (435, 435),
    "kill": (62, 129),
    "tkill": (200, 130),
    "tgkill": (234, 131),
}
# Refused at every level (the box's filter and the fallback's): the kernel's own state, other
# processes' memory, namespaces, mounts, sockets of every family (and io_uring, which can make
# them; socketpair stays: see below), keys, tracing, modules.
_KERNEL_SYSCALLS = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "setns": (308, 268),
    "unshare": (272, 97),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "reboot": (169, 142),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "fsopen": (430, 430),
    "fsmount": (432, 432),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "fspick": (433, 433),
    "fsconfig": (431, 431),
    "mount_setattr": (442, 442),
    "syslog": (103, 116),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "iopl": (172, None),
    "ioperm": (173, None),
    "quotactl": (179, 60),
    "acct": (163, 89),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "socket": (41, 198),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
}
# Refused to Python programs in the fallback only (compilers in the box need them; rustc
# spawns its linker through a socketpair, which reaches nothing but its own other end).
_PROCESS_SYSCALLS = {
    "socketpair": (53, 199),
    "fork": (57, None),
    "vfork": (58, None),
    "execve": (59, 221),
    "execveat": (322, 281),
    "pidfd_send_signal": (424, 424),
    "pidfd_open": (434, 434),
    "mknod": (133, None),
    "mknodat": (259, 33),
}
_DENIED_SYSCALLS = {**_KERNEL_SYSCALLS, **_PROCESS_SYSCALLS}
# clone flags that make a new namespace (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
# NEWNET; NEWTIME is 0x80)
_CLONE_NEW_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
_CLONE_NEW_NAMESPACES |= 0x20000000 | 0x40000000 | 0x00000080


def _seccomp_filter(machine: str, pid: int | None) -> bytes | None:
    """The BPF program. With ``pid`` (the fallback's Python programs): deny every listed
    syscall (EPERM), clone without CLONE_THREAD, signals to any pid but our own. Without (the
    box's filter, for programs in any language): deny the kernel-facing calls and clone into
    new namespaces; processes and signals stay (the PID namespace bounds them). Both: clone3
    is ENOSYS (libc then uses clone, whose flags a filter can read), other ABIs are killed."""
    import struct

    if machine not in _ARCH:
        return None
    col, arch = _ARCH[machine]
    nr = {name: numbers[col] for name, numbers in _SPECIAL_SYSCALLS.items()}
    table = _DENIED_SYSCALLS if pid is not None else _KERNEL_SYSCALLS
    denied = [n[col] for n in table.values() if n[col] is not None]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, deny, nosys, kill = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x80000000
    prog: list = [(ld, 0, 0, 4), (jeq, 0, "KILL", arch), (ld, 0, 0, 0)]
    if machine == "x86_64":
        prog.append((jge, "DENY", 0, 0x40000000))  # the x32 ABI's numbers
    prog += [(jeq, "DENY", 0, n) for n in denied]
    prog += [(jeq, "NOSYS", 0, nr["clone3"]), (jeq, "CLONE", 0, nr["clone"])]
    if pid is not None:
        prog += [(jeq, "SIGNAL", 0, nr[n]) for n in ("kill", "tkill", "tgkill")]
    prog.append((ret, 0, 0, allow))
    labels = {"CLONE": len(prog)}
    if pid is not None:
        prog += [(ld, 0, 0, 16), (jset, "ALLOW", "DENY", 0x00010000)]  # CLONE_THREAD
        labels["SIGNAL"] = len(prog)
        own = (pid, 0, (-pid) & 0xFFFFFFFF)
        prog += [
            (ld, 0, 0, 16),
            *[(jeq, "ALLOW", 0, k) for k in own[:-1]],
            (jeq, "ALLOW", "DENY", own[-1]),
        ]
    else:
        prog += [(ld, 0, 0, 16), (jset, "DENY", "ALLOW", _CLONE_NEW_NAMESPACES)]
    for name, value in (("ALLOW", allow), ("DENY", deny), ("NOSYS", nosys), ("KILL", kill)):
        labels[name] = len(prog)
        prog.append((ret, 0, 0, value))
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out.append(struct.pack("HBBI", code, jt, jf, k))
    return b"".join(out)


def _deny_processes_by_seccomp() -> bool:  # pragma: no cover - sandbox side
    """Install ``_seccomp_filter`` on this process (and what it starts): True when in force."""
    import os

    code = _seccomp_filter(os.uname().machine, os.getpid())
    return code is not None and install_seccomp(code)


def install_seccomp(code: bytes) -> bool:
    """Install the BPF program ``code`` on this process (inherited by what it starts), after
    PR_SET_NO_NEW_PRIVS: True when in force."""
    import ctypes

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(code, len(code))
    prog = Program(len(code) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    if libc.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER


def _run_program(path: str, strict: bool) -> None:  # pragma: no cover - sandbox side
    """``--run FILE``: run a whole program as ``__main__`` (its tracebacks name ``main.py`` and
    skip this file's frame), behind the audit guard in the fallback level."""
    import os
    import sys
    import traceback

    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), os.path.basename(path), "exec")
    sys.argv = [os.path.basename(path)]
    sys.path[:0] = [os.getcwd(), os.path.dirname(path)]  # the latter lets tracebacks show lines
    name = code.co_filename

    def excepthook(t, v, tb) -> None:  # start the traceback at the program's own frames
        first = tb
        while first is not None and first.tb_frame.f_code.co_filename != name:
            first = first.tb_next
        traceback.print_exception(t, v, first or tb)

    sys.excepthook = excepthook
    if strict:
        install_audit_guard(os.getcwd())
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


def _reliability_guard(memory_bytes: int | None) -> None:  # pragma: no cover - sandbox side
    """EvalPlus's in-process guard (destructive helpers set to None), so that completions that
    lean on them fail as they do under EvalPlus; the sandbox around is the real protection."""
    import builtins
    import faulthandler
    import os
    import shutil
    import subprocess
    import sys

    if memory_bytes:
        import resource

        for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK):
            with _suppress():
                resource.setrlimit(limit, (memory_bytes, memory_bytes))
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg "
        "rename renames truncate replace unlink fchmod fchown chmod chown chroot "
        "lchflags lchmod lchown getcwd chdir"
    ).split():
        setattr(os, name, None)
    builtins.open = None
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[mod] = None


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ValueError, OSError))


if __name__ == "__main__":
    import sys as _sys

    if len(_sys.argv) == 3 and _sys.argv[1] == "--run":
        _run_program(_sys.argv[2], __import__("os").environ.get("RC_SANDBOX_STRICT") == "1")
    else:
        _main()
