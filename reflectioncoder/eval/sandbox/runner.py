"""The in-box runner, shipped into the box as a file beside ``codec`` (with its ``tagdecode``)
and ``guards`` (standard
library only) and run there as a script, in one of two modes:

- the Python test run (``runner.pyc --warm``): reads one job from stdin (its first line; a
  phase given without inputs reads them as the next line, after its program has loaded, so
  the loading cannot compute ahead), runs the function on every input (EvalPlus semantics:
  each phase in fresh globals, a time limit per input (CPU time), stdio swallowed, EvalPlus's
  reliability guard), and writes one JSON line per input to
  the result stream: the output it computed, encoded as plain data (``codec``). It never sees
  an expected output, so nothing it prints can be a verdict: the scorer, outside, decodes the
  outputs and compares them;
- ``--run FILE``: a whole program as ``__main__`` (build-data's programs, MultiPL-E's Python),
  behind the audit guard in the fallback level.
"""

from __future__ import annotations


def _siblings():  # pragma: no cover - runs inside the sandbox
    """``codec`` and ``guards``, shipped beside this file (``-I`` puts no folder on sys.path;
    ``codec`` imports ``tagdecode`` from it while it is there)."""
    import sys

    folder = __file__.rpartition("/")[0] or "."
    sys.path.insert(0, folder)
    try:
        import codec
        import guards
    finally:
        if sys.path and sys.path[0] == folder:
            del sys.path[0]
    return codec, guards


def _main() -> None:  # pragma: no cover - runs inside the sandbox
    """Job on stdin -> one result line per input on stdout (see module docstring)."""
    import _signal as signal  # the C module: signal's enums import enum, functools, collections
    import io
    import os
    import sys
    import time

    codec, guards = _siblings()
    # the job's first line; a phase without "inputs" gets them as one more line once it has
    # loaded (the scorer sends them then: the program's loading never sees them)
    job_in = open(os.dup(0), "rb")  # kept: fd 0 becomes /dev/null below
    job = codec.loads_row(job_in.readline())
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
        pending.append((codec.dumps(obj) + "\n").encode())
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
    # MBPP's set-equality tasks: EvalPlus compares set(out), so any iterable may pass; it is
    # listed here, under the input's time limit, as only plain data leaves the box
    set_eq = bool(job.get("output_set_eq"))
    # Limits and ground-truth times are CPU seconds of this process (ITIMER_PROF counts them):
    # they do not grow when the machine is loaded. The scorer's cgroup clock covers children.
    setitimer, signal_fn, perf = signal.setitimer, signal.signal, time.process_time
    if job.get("strict"):
        guards.install_audit_guard(os.getcwd(), job.get("hidden", ()))
    if job.get("guard"):
        _reliability_guard(job.get("memory_bytes"))
    sink, saved = _WriteOnly(), (sys.stdout, sys.stderr, sys.stdin)
    for phase in job["phases"]:
        name, limits = phase["name"], phase.get("time_limits")
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
        inputs = phase["inputs"] if "inputs" in phase else codec.loads_row(job_in.readline())
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
                        "out": codec.encode_output(out is not None if not_none else out),
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
                    if set_eq:
                        out = _listed(out, codec.HUGE_ITEMS)
                finally:
                    setitimer(signal.ITIMER_PROF, 0)
                    sys.stdout, sys.stderr, sys.stdin = saved
            except BaseException as exc:
                emit({"phase": name, "i": i, "error": type(exc).__name__}, now=True)
                if job.get("fail_fast", True):
                    break
                continue
            emit({"phase": name, "i": i, "out": codec.encode_output(out)})
        emit({"phase": name, "done": True}, now=True)


# What the codec ships as plain data (subclasses read through these): left as they are
_PLAIN_TYPES = (str, bytes, bytearray, list, tuple, dict, set, frozenset)


class OutputTooLong(Exception):
    pass


def _listed(value, cap: int):
    """A set-equality task's output as EvalPlus reads it (``set(out)``): an iterable that is not
    plain data (a deque, a generator, a dict view) as the list of its elements. A Python loop,
    so the time limit's signal stops an endless one; past ``cap`` elements it fails."""
    import sys

    numpy = sys.modules.get("numpy")  # its arrays and scalars the codec ships as they are
    plain = _PLAIN_TYPES + ((numpy.ndarray, numpy.generic) if numpy is not None else ())
    if value is None or issubclass(type(value), plain):
        return value
    try:
        elements = iter(value)
    except TypeError:
        return value  # not iterable: shipped opaque, and fails as set(out) does
    items: list = []
    append = items.append
    for item in elements:
        append(item)
        if len(items) > cap:
            raise OutputTooLong
    return items


def _evaluator(env: dict):
    """``fn(expression)``: the expression's value in the program's namespace ``env``."""

    def evaluate(expression: str):
        return eval(expression, env)

    return evaluate


def _run_program(path: str, strict: bool) -> None:  # pragma: no cover - sandbox side
    """``--run FILE``: run a whole program as ``__main__`` (its tracebacks name ``main.py`` and
    skip this file's frame), behind the audit guard in the fallback level."""
    import os
    import sys
    import traceback

    name = os.path.basename(path)

    def excepthook(t, v, tb) -> None:  # start the traceback at the program's own frames
        first = tb
        while first is not None and first.tb_frame.f_code.co_filename != name:
            first = first.tb_next
        # none of them (a SyntaxError from compile): the error alone, as python main.py shows it
        traceback.print_exception(t, v, first)

    sys.excepthook = excepthook  # before compile, so a SyntaxError gets it too
    sys.argv = [name]
    sys.path[:0] = [os.getcwd(), os.path.dirname(path)]  # the latter lets tracebacks show lines
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        code = compile(source, name, "exec")
    except SyntaxError as e:  # the compiler reads the line from ./main.py, not here: give it
        if e.text is None and e.lineno and e.lineno <= len(lines := source.splitlines()):
            e.text = lines[e.lineno - 1] + "\n"
        raise
    if strict:
        _siblings()[1].install_audit_guard(os.getcwd())
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


# What EvalPlus's guard sets to None in modules a program may import: patched when it imports
# them (importing both up front cost 5 ms of every box's start-up, and most programs never do)
_PATCHED_ON_IMPORT = {"shutil": ("rmtree", "move", "chown"), "subprocess": ("Popen",)}
# What the guard takes from os that a module's own import calls (numpy's _core calls putenv):
# lent back while that module runs, as EvalPlus's worker imported numpy before its guard
_LENT_ON_IMPORT = {"numpy": ("putenv",)}


def _reliability_guard(memory_bytes: int | None) -> None:  # pragma: no cover - sandbox side
    """EvalPlus's in-process guard (destructive helpers set to None), so that completions that
    lean on them fail as they do under EvalPlus; the sandbox around is the real protection."""
    import builtins
    import faulthandler
    import os
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
    lent = {m: {n: getattr(os, n) for n in names} for m, names in _LENT_ON_IMPORT.items()}
    for name in (
        "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg "
        "rename renames truncate replace unlink fchmod fchown chmod chown chroot "
        "lchflags lchmod lchown getcwd chdir"
    ).split():
        setattr(os, name, None)
    builtins.open = None
    for module, names in _PATCHED_ON_IMPORT.items():
        if module in sys.modules:
            _set_none(sys.modules[module], names)
    sys.meta_path.insert(0, _PatchOnImport(lent))
    builtins.help = None
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[mod] = None


def _set_none(module, names) -> None:  # pragma: no cover - sandbox side
    for name in names:
        setattr(module, name, None)


class _PatchOnImport:  # pragma: no cover - sandbox side
    """A finder ahead of the others: for ``_PATCHED_ON_IMPORT``'s modules it finds the real
    module through the finders behind it and sets the guarded names to None once the module
    has run, before the importer sees it (``from subprocess import Popen`` gets None); for
    ``_LENT_ON_IMPORT``'s, it lends os the real functions while the module runs (``lent``:
    module -> name -> function, saved before the guard)."""

    def __init__(self, lent: dict) -> None:
        self.lent = lent

    def find_spec(self, name, path=None, target=None):
        import sys

        names, lent = _PATCHED_ON_IMPORT.get(name, ()), self.lent.get(name, {})
        if not names and not lent:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, names, lent)
                return spec
        return None


class _PatchingLoader:  # pragma: no cover - sandbox side
    def __init__(self, loader, names, lent) -> None:
        self.loader, self.names, self.lent = loader, names, lent

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import os

        for name, fn in self.lent.items():
            setattr(os, name, fn)
        try:
            self.loader.exec_module(module)
        finally:
            _set_none(os, self.lent)
        _set_none(module, self.names)


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
