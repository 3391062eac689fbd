"""The replay child's instruments (bench/bench_host_replay.py's docstring): the main thread's
CPU at each host sync and by part of the step (``MARKS``), every op a CUDA run launches a kernel
for (``_OpRecorder``), the ops that make a CUDA host wait (``_SyncSites``) and torch.profiler
over the timed steps (``_StepProfile``).

A child runs bench_host_replay.py by file path beside a replayed commit: this folder is on
sys.path and ``bench`` and ``reflectioncoder`` are the commit's, so this module imports only
the standard library at its top and nothing of this tree's ``bench`` package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class _Marks:
    """Main-thread CPU time (``thread_time``) at each host sync of a step, in order."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []
        self.prepare_cpu: list[float] = []
        self.parts: dict[str, float] = {}
        self.inside: list[str] = []  # the PARTS being run now, outermost first
        self.recorder: _OpRecorder | None = None  # --record-ops: every kernel's issue time

    def mark(self, name: str) -> None:
        self.marks.append((name, time.thread_time()))
        if self.recorder is not None:
            self.recorder.mark(name)

    def clear(self) -> None:
        self.marks.clear()
        self.parts = dict.fromkeys(PARTS.values(), 0.0)

    def timed(self, owner, name: str) -> None:
        """``owner.name`` wrapped: its main-thread CPU added to its part of the step."""
        fn, label = getattr(owner, name), PARTS[name]

        def wrapper(*args, **kwargs):
            t0 = time.thread_time()
            self.inside.append(name)
            if self.recorder is not None:
                self.recorder.seed(args, kwargs)
            try:
                return fn(*args, **kwargs)
            finally:
                self.inside.pop()
                self.parts[label] += time.thread_time() - t0

        setattr(owner, name, wrapper)


MARKS = _Marks()
# The step's host work by where it is spent (main thread; the rest: planning's hand-off, the
# batch to the device, the step's bookkeeping, AdamW's zero_grad, Python between the calls).
PARTS = {
    "forward_hidden": "layers forward (forward_hidden)",
    "reflection_loss": "loss (reflection_loss: plan, chunks; the CLI's teacher-CE pass too)",
    "backward": "backward (loss.backward: recompute, layers, loss)",
    "clip_grad_norm_": "clip_grad_norm_",
    "step": "AdamW step",
    "log": "metrics log",
}


# --record-ops: the ops a CUDA run launches a kernel for, by what the step model times them as.
GEMMS = frozenset(
    {"mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_", "addbmm", "_addmm_activation"}
)
ATTENTION_OPS = frozenset({"_varlen_attn", "_varlen_attn_backward"})  # torch_attn's, as on CUDA
COPIES = frozenset({"copy_", "_to_copy", "clone", "_copy_from", "_local_scalar_dense"})
# Ops that launch no kernel (allocations, aliases); what they return still takes the tag.
NO_KERNEL = frozenset(
    {"detach", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty", "alias"}
    | {"new_empty_strided", "resize_", "set_", "_unsafe_view"}
)
OP_CATEGORIES = ("gemm", "attention", "loss", "elementwise", "copy", "optimizer")


def _tensors(value) -> list:
    """The tensors in an op's argument or result (lists and tuples opened)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class _OpRecorder:
    """Every op of the main thread that a CUDA run would launch a kernel for, with its issue
    time: the main thread's CPU (``thread_time``) less the recorder's own (``skew``), so that
    the times are the replay's; the sync marks likewise (``mark``). An op runs on the GPU
    where one of its tensors would be there: the tensors of the model, the optimizer's states
    (not its host ``step`` counts) and the arguments of the step's device parts (``seed``: the
    batch, the hidden states), and what ops on them return; or where it makes a tensor from
    nothing inside a device part (``torch.zeros`` in the loss). Per op: its name, category
    (``OP_CATEGORIES``: the loss's and the optimizer's own by the part that issued them),
    the shapes and item sizes of its tensors in and out, and for the attention the sum of
    its segments' squared lengths (from cu_seqlens, host-readable on the CPU). What the mode
    costs outside its own code (the dispatcher's call into Python, ``per_op_s``) is measured
    on ops of nothing and taken off every op dispatched (``dispatched``)."""

    def __init__(self) -> None:
        from torch.utils.weak import WeakTensorKeyDictionary

        self.on_device = WeakTensorKeyDictionary()
        self.skew = 0.0
        self.dispatched = 0
        self.steps: list[list] = []
        self.per_op_s = 0.0
        self.per_op_s = self._calibrate()

    def _calibrate(self, n: int = 4000, rounds: int = 3) -> float:
        """Seconds the mode adds to an op beyond ``skew``: n host adds with and without it,
        the least of ``rounds`` after a first (its one-time set-up) left out."""
        import torch

        x = torch.zeros(4)
        self.steps.append([])
        extra = []
        for _ in range(rounds + 1):
            t0 = time.thread_time()
            for _ in range(n):
                x.add(1)
            plain = time.thread_time() - t0
            skew, t0 = self.skew, time.thread_time()
            with self.mode():
                for _ in range(n):
                    x.add(1)
            extra.append((time.thread_time() - t0 - (self.skew - skew) - plain) / n)
        self.steps.clear()
        self.skew, self.dispatched = 0.0, 0
        return max(0.0, min(extra[1:]))

    def _now(self) -> float:
        return time.thread_time() - self.skew - self.per_op_s * self.dispatched

    def mark(self, name: str) -> None:
        if name == "start":
            self.steps.append([])
        if self.steps:
            self.steps[-1].append(["mark", name, self._now()])

    def seed(self, args, kwargs) -> None:
        """Tag the device tensors among a device part's arguments (one level into modules,
        optimizers and dataclasses)."""
        import torch

        t0 = time.thread_time()
        for arg in (*args, *kwargs.values()):
            found = _tensors(arg)
            if isinstance(arg, torch.nn.Module):
                found = [t for p in arg.parameters() for t in (p, p.grad) if t is not None]
            elif isinstance(arg, torch.optim.Optimizer):
                found = [p for g in arg.param_groups for p in g["params"]]
                for state in arg.state.values():
                    found += [v for k, v in state.items() if k != "step" and torch.is_tensor(v)]
            elif dataclasses.is_dataclass(arg):
                found = _tensors([getattr(arg, f.name) for f in dataclasses.fields(arg)])
            for t in found:
                self.on_device[t] = True
        self.skew += time.thread_time() - t0

    def _category(self, name: str) -> str:
        if "reflection_loss" in MARKS.inside:
            return "loss"
        if "step" in MARKS.inside or "clip_grad_norm_" in MARKS.inside:
            return "optimizer"
        if name in GEMMS:
            return "gemm"
        if name in ATTENTION_OPS:
            return "attention"
        return "copy" if name in COPIES else "elementwise"

    @contextlib.contextmanager
    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        rec = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                t0 = time.thread_time()
                issue = rec._now()
                rec.dispatched += 1
                kwargs = kwargs or {}
                ins = _tensors(list(args) + list(kwargs.values()))
                parts = MARKS.inside and MARKS.inside[-1] != "log"
                device = any(t in rec.on_device for t in ins) or (not ins and bool(parts))
                t1 = time.thread_time()
                out = func(*args, **kwargs)
                t2 = time.thread_time()
                name = func.overloadpacket.__name__
                outs = _tensors(out)
                if device:
                    for t in outs:
                        rec.on_device[t] = True
                    if not func.is_view and name not in NO_KERNEL:
                        rec.steps[-1].append(rec._op(name, issue, ins, outs))
                rec.skew += (t1 - t0) + (time.thread_time() - t2)
                return out

        with Mode():
            yield

    def _op(self, name: str, issue: float, ins: list, outs: list) -> list:
        import torch

        extra = 0
        if name in ATTENTION_OPS:  # cu_seq_q: the first 1-D int32 tensor
            cu = next(t for t in ins if t.dim() == 1 and t.dtype == torch.int32).tolist()
            extra = sum((b - a) ** 2 for a, b in zip(cu, cu[1:], strict=False))

        def shapes(ts):
            return [[list(t.shape), t.element_size()] for t in ts]

        return [name, issue, self._category(name), shapes(ins), shapes(outs), extra]


def _time_parts(optimizer_cls, logger_cls=None) -> None:
    """Time each part of PARTS where the commit's code calls it (by module attribute)."""
    import torch

    import reflectioncoder.loss
    import reflectioncoder.model

    MARKS.timed(reflectioncoder.model, "forward_hidden")
    MARKS.timed(reflectioncoder.loss, "reflection_loss")
    MARKS.timed(torch.Tensor, "backward")
    MARKS.timed(optimizer_cls, "step")
    if logger_cls is not None:
        MARKS.timed(logger_cls, "log")


def _step_row(step: int, tokens: int, c0: float, w0: float) -> dict:
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    t = [m for _, m in MARKS.marks]
    segments = {}
    for (a, t0), (b, t1) in zip(MARKS.marks, MARKS.marks[1:], strict=False):
        segments[f"{len(segments)}: {a} -> {b}"] = t1 - t0
    return {
        "step": step,
        "tokens": tokens,
        "start_wall_s": w0,
        "cpu_s": cpu,
        "main_thread_cpu_s": t[-1] - t[0],
        "wall_s": wall,
        "segments_main_cpu_s": segments,
        "parts_main_cpu_s": dict(MARKS.parts),
    }


@contextlib.contextmanager
def _timed_step(rows: list[dict], step: int = 0, tokens: int = 0):
    """One step timed (its sync marks from a clear start): its ``_step_row`` appended to
    ``rows``; the step and tokens as given, or as the caller sets them in the yielded dict."""
    MARKS.clear()
    c0, w0 = time.process_time(), time.perf_counter()
    MARKS.mark("start")
    given = {"step": step, "tokens": tokens}
    yield given
    MARKS.mark("end")
    rows.append(_step_row(given["step"], given["tokens"], c0, w0))


def _recording():
    """The op recorder's mode where ``--record-ops`` set one (``_OpRecorder``)."""
    return MARKS.recorder.mode() if MARKS.recorder is not None else contextlib.nullcontext()


def _host_overhead():
    """This tree's bench/bench_host_overhead.py (the commit's ``bench`` comes first on the path)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.append(str(ROOT / "bench"))
    import bench_host_overhead

    return bench_host_overhead


class _SyncSites:
    """Ops of one step that make a CUDA host wait for the GPU, each with the innermost caller
    outside torch and the innermost in the commit's code. On the CPU none of them waits; the
    sites say where a CUDA run did."""

    OPS = ("nonzero", "_local_scalar_dense", "masked_select", "unique", "_unique2")

    def __init__(self, site: Path) -> None:
        self.roots = (str(site), str(site.resolve().parent))
        self.sites: dict[str, int] = {}
        self.ops = 0  # ops that reach a kernel (bench_host_overhead's _Count): CUDA launches

    def _where(self) -> str:
        import traceback

        stack = [f for f in traceback.extract_stack()[:-3] if "/torch/" not in f.filename]
        ours = [f for f in stack if f.filename.startswith(self.roots)]
        inner = f"{'/'.join(Path(stack[-1].filename).parts[-2:])}:{stack[-1].lineno}"
        if not ours:
            return inner
        path = ours[-1].filename
        for root in self.roots:
            path = path.removeprefix(root + "/")
        outer = f"{path}:{ours[-1].lineno}"
        return outer if ours[-1] is stack[-1] else f"{outer} (in {inner})"

    def count(self, what: str) -> None:
        key = f"{what} @ {self._where()}"
        self.sites[key] = self.sites.get(key, 0) + 1

    @contextlib.contextmanager
    def mode(self):
        import torch

        sites = self

        class Mode(_host_overhead()._Count):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name in sites.OPS or (
                    name == "repeat_interleave" and (kwargs or {}).get("output_size") is None
                ):
                    sites.count(name)
                return super().__torch_dispatch__(func, types, args, kwargs)

        tolist = torch.Tensor.tolist

        def counted_tolist(tensor):
            sites.count("tolist")
            return tolist(tensor)

        torch.Tensor.tolist = counted_tolist
        mode = Mode()
        try:
            with mode:
                yield
        finally:
            torch.Tensor.tolist = tolist
            self.ops += mode.ops


class _StepProfile:
    """torch.profiler over the timed steps ``first``..``last`` (CPU activities, CUDA's too on
    CUDA), each step inside a ``replay step N`` range; the trace is written to ``trace`` (a
    Chrome trace, read by the parent: host_replay_profile.profile_steps). ``trace`` None:
    nothing profiled."""

    def __init__(self, trace: str | None, device: str, first: int, last: int) -> None:
        self.trace, self.device, self.first, self.last = trace, device, first, last
        self.prof = None

    @contextlib.contextmanager
    def step(self, index: int):
        if self.trace is None or not self.first <= index <= self.last:
            yield
            return
        import torch
        from torch.profiler import ProfilerActivity, profile, record_function

        if index == self.first:
            acts = [ProfilerActivity.CPU]
            acts += [ProfilerActivity.CUDA] if self.device == "cuda" else []
            self.prof = profile(activities=acts)
            self.prof.start()
        with record_function(f"replay step {index}"):
            yield
        if index == self.last:
            if self.device == "cuda":
                torch.cuda.synchronize()  # the last step's kernels inside the trace
            self.prof.stop()
            self.prof.export_chrome_trace(self.trace)
