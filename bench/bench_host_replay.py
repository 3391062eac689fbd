"""Host (CPU) time of a whole measured training step, replayed with the code that ran it.

    python -m bench.bench_host_replay --out bench/results/host_replay.json
    python -m bench.bench_host_replay --device cuda --archives .replay --out OUT.json  # a GPU
    python -m bench.bench_host_replay --device cpu --profile --widths 2    # the same path, CPU
    python -m bench.bench_host_replay --op-timeline --out bench/results/host_replay.json

bench/step_model.py's calibration has two steps measured on an H200: the 1.06B CLI step
(``reflectioncoder train`` through bench/bench_engines.py at commit de58a14) and the 1.5B
bench step (bench/test_train_step.py's ``ours`` at 3d82f92). This script extracts each
commit's tree (``git archive`` into a temporary folder; the working tree is not touched) and
runs that commit's own code on the CPU as the run went: for the CLI step bench_engines' saved
model, toy data, tokenizer and ``reflectioncoder train`` overrides (the CLI, its planning and
packing on the background thread, the teacher-CE logging pass, clipping, foreach AdamW,
metrics), steps 2-4 of 4; for the 1.5B step the suite's prepared micro-batches, model and
AdamW, one warm-up call and ``STEP_1B_ROUNDS`` timed calls. Depth, micro-batches and tokens
are the run's; the hidden size is tiny (``WIDTHS``: 2, 4, 8; the heads as many as the width,
head size 1, the KV heads a quarter of them as run, at least one; the MLP scaled with the
width) so that the kernels cost little and the CPU time is what the host spends issuing the
work. One thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``). Per step: the
process's CPU time (``process_time``: the background packing thread included), the main
thread's (``thread_time``) and wall time; per width the median over the steps the run timed
(steps 2-4; the suite's median of its calls), the least of ``--rounds`` fresh processes. The
host at width 0 is extrapolated (least squares, linear in the width: what the CPU kernels
still cost at these widths grows with T x width); the smallest width is an upper bound. The
main thread's CPU is also split by where it is spent (``PARTS``: the layers' forward, the
loss calls, backward, clipping, AdamW, the metrics; the rest is the step's glue).

CUDA-only kernels run as one-op CPU stand-ins (one launch each), the Python around them as it
ran: Liger's RMSNorm / RoPE / SwiGLU (bench_host_overhead's stand-ins: one op forward, two
backward), torch's varlen attention (what both commits picked on the H200, which had no
flash-attn: its Python wrapper and custom op as they are, a CPU kernel of one op registered
for ``torch_attn::_varlen_attn`` and its backward), the fused loss's Triton row and slot-sum
kernels (one op each; the GPU's chunk budget, so the chunks are the GPU's). Not replayed: the
cost of a CUDA launch and of the caching allocator against a CPU op's (stated in RESULTS).

The step is split at its host syncs (where a CUDA run waits for the GPU to drain): the main
thread's CPU time between them, marked where each happens (the loss plan's ``nonzero``; the
CLI's ``tolist`` after clipping). A separate run (``--count-syncs`` in the child) lists every
op of one step that syncs on CUDA (``nonzero``, ``item`` / ``bool`` of a tensor, ``tolist``,
``repeat_interleave`` without ``output_size``) with the file and line that called it.

``--op-timeline`` records, for bench/step_model.py's simulation of one CUDA stream, every op of
one step that a CUDA run launches a kernel for (``_OpRecorder``: a ``TorchDispatchMode`` over
the main thread; the ops on the model's, optimizer's and batch's tensors and what they make,
the stand-ins as one kernel each): its issue time since its segment's start (the recorder's
own CPU taken off), category, and FLOPs and bytes at the run's own shapes, at widths 8 and 16
(least of 3 processes each), the issue times extrapolated to width 0 (bench/host_replay_ops.py).

``--device cuda`` (``--profile`` on the CPU) settles what the replay cannot: each step at the
run's own shapes with its own CUDA kernels (Liger, torch's varlen attention pinned as on the
H200, the fused loss's Triton kernels; on the CPU the stand-ins at the first of ``--widths``),
timed unprofiled, then the timed steps again through torch.profiler in the same process. Per
step: wall, the main thread's CPU, GPU busy time (the union of kernels and copies), the GPU's
idle after each host sync and between kernels, kernels, launches, host CPU per launch, kernel
time by category (bench/host_replay_profile.py reads the Chrome trace); the medians against
the step model's calibration row, and a ``reading``: (a) a launch costs the host more, or (b)
the GPU is slower at these shapes than modelled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (2, 4, 8)
COMMITS = {"cli": "de58a14", "step_1b": "3d82f92"}
CASES = (*COMMITS, "host_speed")
STEP_1B_ROUNDS = 5  # the headline profile's rounds (bench/profiles.py at 3d82f92)
STEP_1B_VOCAB = 512
CLI_HEADS, CLI_LAYERS = 16, 24  # bench_engines' 1b shape: num_kv_heads = heads // 4
CLI_HIDDEN, CLI_INTERMEDIATE_PER_HIDDEN = 2048, 5504 / 2048
CLI_TIMED_STEPS = 3  # bench_engines' steps 2-4 of 4: the first is the warm-up
REAL = 0  # a child's width: the measured run's own shape (--device cuda)


def archive(commit: str, archives: Path | None = None) -> bytes:
    """``commit``'s tree as a tar: ``archives/<commit>.tar`` where written beforehand
    (``--write-archives``: a lent GPU gets the working tree without git's history), else
    ``git archive``."""
    saved = archives / f"{commit}.tar" if archives else None
    if saved is not None and saved.is_file():
        return saved.read_bytes()
    cmd = ["git", "-C", str(ROOT), "archive", commit]
    try:
        return subprocess.run(cmd, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        where = f"{saved} is missing and " if saved else ""
        raise RuntimeError(
            f"{commit}: {where}git archive failed ({_why(e)}); "
            "where git has the history: python -m bench.bench_host_replay --write-archives "
            ".replay, and carry .replay"
        ) from e


def _why(error: Exception) -> str:
    stderr = getattr(error, "stderr", None)
    return stderr.decode(errors="replace").strip() if stderr else str(error)


def extract(commit: str, folder: Path, archives: Path | None = None) -> Path:
    """``commit``'s tree under ``folder``; returns a folder holding only its two
    packages, importable as they were installed (setup.py maps ``reflectioncoder.kernels`` to
    ``kernels/``; a bare ``kernels`` on sys.path would meet transformers' hub probe)."""
    tree = folder / commit
    tree.mkdir(parents=True)
    archive_ = archive(commit, archives)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive_, check=True)
    (tree / "reflectioncoder" / "kernels").symlink_to(tree / "kernels")
    site = tree / "_site"
    site.mkdir()
    for package in ("reflectioncoder", "bench"):
        (site / package).symlink_to(tree / package)
    return site


# ---------------------------------------------------------------------------------------------
# In the child (started by file path, so ``bench`` and ``reflectioncoder`` are the commit's).


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


def _stand_in_liger() -> None:
    """Liger's RMSNorm, RoPE and SwiGLU as prepare_model applies them on CUDA."""
    from transformers.models.llama import modeling_llama as ml

    overhead = _host_overhead()
    ml.LlamaRMSNorm.forward = overhead._fused_rms_norm
    ml.LlamaMLP.forward = overhead._fused_mlp
    ml.apply_rotary_pos_emb = overhead._fused_rope


def _host_overhead():
    """This tree's bench/bench_host_overhead.py (the commit's ``bench`` comes first on the path)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.append(str(ROOT / "bench"))
    import bench_host_overhead

    return bench_host_overhead


def _stand_in_varlen_attention():
    """torch's varlen attention, its Python and custom op as they ran; a CPU kernel of one
    op stands in for CUDA's (a causal SDPA over all T tokens at once would cost T^2 here)."""
    import torch

    _pin_torch_varlen()

    def forward(q, k, v, *args, **kwargs):
        return q.mul(1.0), q.new_zeros(q.shape[1], q.shape[0]), q.new_zeros(2)

    def backward(grad, q, k, v, *args, **kwargs):
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    lib = torch.library.Library("torch_attn", "IMPL")
    lib.impl("_varlen_attn", forward, "CPU")
    lib.impl("_varlen_attn_backward", backward, "CPU")
    return lib


def _pin_torch_varlen() -> None:
    """The attention both commits picked on the H200 (no flash-attn there): torch's varlen."""
    import reflectioncoder.kernels  # noqa: F401  (its __init__ binds the function's name)

    va = sys.modules["reflectioncoder.kernels.varlen_attention"]
    va.varlen_backend = lambda *args, **kwargs: "torch_varlen"


def _stand_in_loss_kernels() -> None:
    """The fused loss as on CUDA: the GPU's chunk budget, one op for the Triton row kernel
    and one for the slot sum (the CPU path loops over 32-row blocks); its plan marked."""
    import reflectioncoder.kernels.fused_loss as fl
    import torch
    from reflectioncoder.kernels.fused_loss_torch import GPU_BUDGET

    def row_op(z, targets, ce_w, kl_w, ce_out, kl_out, write_dz) -> None:
        ce_out.copy_(ce_w)  # one launch writes CE, KL and d z in place

    def sum_slots(dh_slots, rows, n, g):
        out = torch.zeros(n, dh_slots.shape[1], dtype=dh_slots.dtype)
        return out.index_add_(0, rows, dh_slots)

    plan = fl.build_plan

    def build_plan(*args, **kwargs):
        MARKS.mark("loss plan nonzero")  # its nonzero: a CUDA host waits for the GPU here
        return plan(*args, **kwargs)

    check = fl.check_loss_inputs

    def check_as_on_cuda(*args, check_indices=None, **kwargs):
        return check(*args, check_indices=False, **kwargs)  # CUDA's default: no index check

    fl.check_loss_inputs = check_as_on_cuda
    fl.torch_row_op = row_op
    fl.torch_sum_slots = sum_slots
    fl.default_budget = lambda device: GPU_BUDGET
    fl.build_plan = build_plan


def _stand_ins(device: str):
    """The CPU's one-op stand-ins; on CUDA the run's own kernels, only the attention pinned
    to torch's varlen kernel (what both commits picked on the H200, which had no flash-attn;
    a device with flash-attn installed would otherwise pick it)."""
    if device == "cuda":
        _pin_torch_varlen()
        return None
    _stand_in_liger()
    _stand_in_loss_kernels()
    return _stand_in_varlen_attention()


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


def _wrap_trainer(
    trainer_cls, counter: _SyncSites | None, prof: _StepProfile | None = None
) -> list[dict]:
    """Time each train_step (its sync marks), the background packing's CPU, and mark the
    step's last sync (the ``tolist`` right after clipping)."""
    import torch

    rows: list[dict] = []
    step_fn, prepare_fn = trainer_cls.train_step, trainer_cls._prepare
    MARKS.timed(torch.nn.utils, "clip_grad_norm_")
    clip = torch.nn.utils.clip_grad_norm_

    def clip_then_mark(*args, **kwargs):
        out = clip(*args, **kwargs)
        MARKS.mark("tolist after clipping")  # the next line's .tolist() drains the GPU
        return out

    def prepare(self, step):
        t0 = time.thread_time()
        out = prepare_fn(self, step)
        MARKS.prepare_cpu.append(time.thread_time() - t0)
        return out

    def train_step(self):
        counting = counter is not None and self.step == 1  # the second step, as timed ones
        with _timed_step(rows) as timed:
            with prof.step(self.step) if prof else contextlib.nullcontext():
                with counter.mode() if counting else _recording():
                    row = step_fn(self)
            timed.update(step=row["step"], tokens=row["tokens"])
        return row

    trainer_cls.train_step = train_step
    trainer_cls._prepare = prepare
    torch.nn.utils.clip_grad_norm_ = clip_then_mark
    return rows


def _cli_child(width: int, counter: _SyncSites | None, device: str, trace: str | None) -> dict:
    """bench_engines' plain case at de58a14 (bench/results/gpu/engines_cuda_bf16.json), at
    hidden size ``width`` (``REAL``: bench_engines' 1b shape, as run on CUDA)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    lib = _stand_ins(device)
    from reflectioncoder.train.toydata import write_toy_jsonl

    from reflectioncoder.cli import main
    from reflectioncoder.model import build_tiny_llama
    from reflectioncoder.tokenizer import train_tokenizer
    from reflectioncoder.train import trainer
    from reflectioncoder.train.metrics import MetricsLogger

    prof = _StepProfile(None, device, 1, CLI_TIMED_STEPS)  # the second run's trace
    rows = _wrap_trainer(trainer.Trainer, counter, prof)
    _time_parts(torch.optim.AdamW, MetricsLogger)
    width = width or CLI_HIDDEN
    arch = {
        "hidden_size": width,
        "intermediate_size": round(width * CLI_INTERMEDIATE_PER_HIDDEN),
        "num_layers": CLI_LAYERS,
        "num_heads": min(CLI_HEADS, width),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)  # bench_engines._prepare at de58a14: 48 samples x 4 steps
        data = write_toy_jsonl(folder / "toy.jsonl", 48 * 4, seed=0, generation_fraction=0.0)
        tok = train_tokenizer(data.read_text().splitlines(), vocab_size=400)
        kv_heads = max(1, arch["num_heads"] // 4)  # bench_engines' heads // 4 (1 at width 2)
        model = build_tiny_llama(len(tok), num_kv_heads=kv_heads, seed=0, **arch)
        model.config._attn_implementation = "sdpa"
        model.save_pretrained(str(folder / "model"))
        tok.save_pretrained(str(folder / "model"))
        argv = ["train", "--preset", "tiny"]
        for o in (
            f"model.name_or_path={folder / 'model'}",
            "model.gradient_checkpointing=true",
            f"data.files=[{data}]",
            "checkpoint.save_every=0",
            "checkpoint.save_final=false",
            "train.samples_per_step=48",
            f"train.max_steps={CLI_TIMED_STEPS + 1}",
            f"train.device={device}",
            *(["train.threads=1"] if device == "cpu" else []),
            "model.dtype=bf16",  # as on CUDA: fp32 weights under bf16 autocast, plain engine
            "optim.lr=1e-4",
            "packing.max_tokens=16384",
            "logging.progress=false",
            "logging.tensorboard=false",
            "logging.plot=false",
            "distributed.backend=none",
        ):
            argv += ["--set", o]
        if main([*argv, "--set", f"checkpoint.out_dir={folder / 'run-plain'}"]) != 0:
            raise RuntimeError("reflectioncoder train failed")
        out = {"arch": arch, "steps": list(rows), "prepare_cpu_s": list(MARKS.prepare_cpu)}
        if trace:  # the same run again in this process, profiled: its own warm-up step first
            rows.clear()
            prof.trace = trace
            if main([*argv, "--set", f"checkpoint.out_dir={folder / 'run-profiled'}"]) != 0:
                raise RuntimeError("reflectioncoder train (profiled) failed")
            out["profiled_steps"] = rows
    if lib is not None:
        lib._destroy()
    return out


def _step_1b_child(width: int, counter: _SyncSites | None, device: str, trace: str | None) -> dict:
    """bench/test_train_step.py's ``ours`` at 3d82f92 with the headline profile (LLAMA_1B: 16
    layers, 32 / 8 heads, vocabulary 128256; 4 samples in 3 micro-batches; bf16 weights, no
    checkpointing; torch's AdamW, foreach as on CUDA tensors), at hidden size ``width``
    (``REAL``: the profile's own shape and vocabulary, as run on CUDA)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    lib = _stand_ins(device)
    import reflectioncoder.model as rm
    from bench.profiles import PROFILES
    from bench.providers import train_step as T

    headline = PROFILES["headline"].train_step
    if width == REAL:
        keys = ("hidden", "heads", "kv_heads", "intermediate", "layers", "vocab")
        shape = {k: headline[k] for k in keys if k in headline}
    else:
        heads = min(32, width)
        shape = dict(hidden=width, heads=heads, kv_heads=max(1, heads // 4), intermediate=4 * width)
    cfg = T.TrainStepConfig(**{**headline, **shape}, device=device)
    cfg = dataclasses.replace(cfg, dtype="bf16")
    build = rm.build_tiny_llama
    # The samples are drawn with the run's vocabulary (so the lengths and packing are the
    # run's); the model and loss take ids modulo STEP_1B_VOCAB: the (rows, V) logits of a
    # 128K vocabulary would cost the CPU far more than their one GEMM launch; the chunks, one
    # per micro-batch at either size under the GPU's budget, and so the ops, are the same.
    vocab = STEP_1B_VOCAB if device == "cpu" else None
    if vocab:
        rm.build_tiny_llama = lambda _, **kw: build(vocab, **kw)
    _time_parts(torch.optim.AdamW)
    model, opt, data, step = T.setup_provider("ours", cfg)
    rm.build_tiny_llama = build
    for group in opt.param_groups:
        group["foreach"] = True  # torch's default for CUDA tensors (on the CPU a loop)
    batches = data[0]
    if vocab:
        batches = [
            dataclasses.replace(
                b,
                input_ids=b.input_ids % vocab,
                targets=torch.where(b.targets >= 0, b.targets % vocab, b.targets),
            )
            for b in batches
        ]
    tokens = sum(b.num_tokens for b in batches)
    rows, profiled = [], []
    for i in range(1 + STEP_1B_ROUNDS):  # the suite: one warm-up call, then the timed ones
        with _timed_step(rows, i + 1, tokens):
            with counter.mode() if counter is not None and i == 1 else _recording():
                step(model, opt, batches, cfg)  # ends in the suite's synchronize on CUDA
    prof = _StepProfile(trace, device, 1, STEP_1B_ROUNDS)
    for i in range(1, 1 + STEP_1B_ROUNDS) if trace else ():  # the timed calls again, profiled
        with _timed_step(profiled, i + 1, tokens), prof.step(i):
            step(model, opt, batches, cfg)
    if lib is not None:
        lib._destroy()
    micro = [[list(b.seq_lens), int(b.loss_rows.shape[0])] for b in batches]
    out = {"arch": shape, "steps": rows, "prepare_cpu_s": [], "micro_batches": micro}
    return out | ({"profiled_steps": [rows[0], *profiled]} if trace else {})


# bench/results/gpu/pytest_benchmark_test_{mask,packing}.json: host-only rows the suite timed on
# the H200 machine of the 1.5B step (3d82f92, CPU ms, median of 5 after a warm-up, torch's
# default threads there), timed here again with the same code: their ratio is how fast that
# machine's host ran this kind of Python-heavy work against this one's.
H200_HOST_ROWS_MS = {
    "mask host 512 samples": 13.957,
    "pack_step block_mask/tce rate 0.5": 141.786,
    "pack_step block_mask/tce rate 1": 137.323,
    "pack_step random_token_mask rate 0.5": 150.62,
    "pack_step random_token_mask rate 1": 132.591,
}


def _host_speed_child(width: int, counter: _SyncSites | None, device: str, trace) -> dict:
    """The H200 suite's host-only rows at 3d82f92 (H200_HOST_ROWS_MS), timed as it timed them."""
    from bench.providers import mask as M
    from bench.providers import packing as P

    x = M.setup_mask(512, 0.5, device="cpu")
    samples = P.setup_packing(512, 3407)
    fns = {"mask host 512 samples": M.make_mask_fn("host", x)}
    for strategy in ("block_mask/tce", "random_token_mask"):
        for rate in (0.5, 1.0):
            fns[f"pack_step {strategy} rate {rate:g}"] = lambda s=strategy, r=rate: P.pack_step(
                samples, s, r, 16384, 3407
            )
    rows = {}
    for name, fn in fns.items():
        fn()
        cpu = []
        for _ in range(5):
            c0 = time.process_time()
            fn()
            cpu.append(time.process_time() - c0)
        rows[name] = 1e3 * statistics.median(cpu)
    return {"arch": {}, "steps": [], "prepare_cpu_s": [], "cpu_ms": rows}


def _recording():
    """The op recorder's mode where ``--record-ops`` set one (``_OpRecorder``)."""
    return MARKS.recorder.mode() if MARKS.recorder is not None else contextlib.nullcontext()


def _child(
    kind: str,
    site: Path,
    width: int,
    count_syncs: bool,
    device: str = "cpu",
    trace=None,
    record_ops: bool = False,
) -> dict:
    sys.path.insert(0, str(site))
    counter = _SyncSites(site) if count_syncs else None
    MARKS.recorder = _OpRecorder() if record_ops else None
    run = {"cli": _cli_child, "step_1b": _step_1b_child, "host_speed": _host_speed_child}[kind]
    out = {"width": width, "device": device, **run(width, counter, device, trace)}
    if counter is not None:
        out["syncs"], out["ops"] = counter.sites, counter.ops
    if MARKS.recorder is not None:
        out["op_steps"], out["recorder_per_op_s"] = MARKS.recorder.steps, MARKS.recorder.per_op_s
    return out


# ---------------------------------------------------------------------------------------------
# The parent: fresh processes per width and round, the least of the rounds, the fit to width 0.


def _run_child(
    kind: str,
    site: Path,
    width: int,
    count_syncs: bool = False,
    device: str = "cpu",
    trace: Path | None = None,
    record_ops: bool = False,
) -> dict:
    env = dict(os.environ)
    if device == "cpu":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--site", str(site)]
    cmd += ["--width", str(width), "--device", device]
    cmd += (["--count-syncs"] if count_syncs else []) + (["--trace", str(trace)] if trace else [])
    cmd += ["--record-ops"] if record_ops else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} width {width}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fit_zero(widths: list[int], values: list[float]) -> tuple[float, float]:
    """Least squares value = a + b x width: (a, b)."""
    n = len(widths)
    mx, my = sum(widths) / n, sum(values) / n
    sxx = sum((x - mx) ** 2 for x in widths)
    b = sum((x - mx) * (y - my) for x, y in zip(widths, values, strict=True)) / sxx
    return my - b * mx, b


def _fit_keys(widths: list[int], rows: list[dict], keys: list[str]) -> dict:
    """Per key of ``rows`` (one a width): its ``_fit_zero`` as {at_width_0, per_width}."""
    fit = {}
    for key in keys:
        a, b = _fit_zero(widths, [r[key] for r in rows])
        fit[key] = {"at_width_0": a, "per_width": b}
    return fit


# A step's main-thread CPU split two ways: between its host syncs, and by PARTS.
SPLITS = ("segments_main_cpu_s", "parts_main_cpu_s")


def _summary(runs: list[dict], first: int) -> dict:
    """Per timed step the least over the rounds (its segments from the round with the least
    main-thread CPU), then the median over the timed steps (the run's own statistic)."""
    per_step = []
    for i in range(first, len(runs[0]["steps"])):
        steps = [r["steps"][i] for r in runs]
        best = min(steps, key=lambda s: s["main_thread_cpu_s"])
        per_step.append(
            {
                **best,
                "cpu_s": min(s["cpu_s"] for s in steps),
                "wall_s": min(s["wall_s"] for s in steps),
            }
        )
    median = {
        k: statistics.median(s[k] for s in per_step)
        for k in ("cpu_s", "main_thread_cpu_s", "wall_s")
    }
    for split in SPLITS:
        median[split] = {
            k: statistics.median(s[split][k] for s in per_step) for k in per_step[0][split]
        }
    prepared = [r["prepare_cpu_s"][first:] for r in runs if r["prepare_cpu_s"]]
    if prepared:
        median["prepare_cpu_s"] = statistics.median(min(p) for p in zip(*prepared, strict=True))
    return {"per_step": per_step, "median": median}


def replay(kind: str, site: Path, widths: tuple[int, ...], rounds: int) -> dict:
    rows = []
    for width in widths:
        runs = [_run_child(kind, site, width) for _ in range(rounds)]
        # the CLI: bench_engines' median of steps 2-4; the 1.5B: the calls after the warm-up
        rows.append({"width": width, "arch": runs[0]["arch"], **_summary(runs, first=1)})
        if "micro_batches" in runs[0]:
            rows[-1]["micro_batches"] = runs[0]["micro_batches"]
        print(json.dumps({"case": kind, "width": width, **rows[-1]["median"]}), flush=True)
    ws = [r["width"] for r in rows]
    medians = [r["median"] for r in rows]
    keys = ("cpu_s", "main_thread_cpu_s", "wall_s", "prepare_cpu_s")
    fit = _fit_keys(ws, medians, [k for k in keys if k in medians[0]])
    for split in SPLITS:
        fit[split] = _fit_keys(ws, [m[split] for m in medians], list(medians[0][split]))
    counted = _run_child(kind, site, widths[0], count_syncs=True)
    return {
        "commit": COMMITS[kind],
        "widths": rows,
        "fit": fit,
        "syncs_one_step": counted["syncs"],
        "ops_one_step": counted["ops"],
    }


def host_speed(site: Path, rounds: int) -> dict:
    """The H200 machine's host-only rows against this machine's (the least over rounds)."""
    runs = [_run_child("host_speed", site, 0)["cpu_ms"] for _ in range(rounds)]
    rows = {}
    for name, h200_ms in H200_HOST_ROWS_MS.items():
        here = min(r[name] for r in runs)
        rows[name] = {"h200_host_ms": h200_ms, "here_ms": here, "h200_over_here": h200_ms / here}
    ratio = statistics.median(r["h200_over_here"] for r in rows.values())
    print(json.dumps({"host_speed_h200_over_here": ratio}), flush=True)
    return {"commit": COMMITS["step_1b"], "rows": rows, "median_h200_over_here": ratio}


# ---------------------------------------------------------------------------------------------
# --profile: each timed step through torch.profiler, the GPU's side too on CUDA (real widths).


def profile_case(kind: str, site: Path, device: str, width: int) -> dict:
    """One fresh process runs the steps unprofiled (wall from one step's start to the next,
    the main thread's CPU), then again profiled (the CLI: the whole run again, its warm-up
    step included); per timed step both, with the host's CPU per launch (unprofiled CPU /
    the profile's launches)."""
    from bench.host_replay_profile import profile_steps, summarise_case

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        timed = _run_child(kind, site, width, device=device, trace=trace)
        case = summarise_case(kind, device, timed, profile_steps(json.loads(trace.read_text())))
    print(json.dumps({"case": kind, **case["median"]}), flush=True)
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--site", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count-syncs", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record-ops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: the steps at the measured runs' own shapes, their own kernels (implies "
        "--profile); cpu: tiny widths, one-op stand-ins",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="each timed step through torch.profiler (the first of --widths on the CPU): "
        "JSON to --out, a markdown table beside it (.md)",
    )
    parser.add_argument(
        "--archives",
        type=Path,
        default=None,
        help="read each commit's tree from ARCHIVES/<commit>.tar where there (a GPU's copy of "
        "the working tree has no git history)",
    )
    parser.add_argument(
        "--write-archives",
        type=Path,
        default=None,
        metavar="DIR",
        help="write DIR/<commit>.tar for both commits (git archive) and exit",
    )
    parser.add_argument(
        "--op-timeline",
        action="store_true",
        help="record every kernel-launching op of one step per case at OP_WIDTHS (issue time, "
        "category, work at the run's shapes) into --out's 'op_timeline', keeping the rest",
    )
    parser.add_argument("--trace", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = _child(
            args.child,
            Path(args.site),
            args.width,
            args.count_syncs,
            args.device,
            args.trace,
            args.record_ops,
        )
        print(json.dumps(child))
        return 0
    if args.write_archives:
        args.write_archives.mkdir(parents=True, exist_ok=True)
        for commit in COMMITS.values():
            (args.write_archives / f"{commit}.tar").write_bytes(archive(commit))
        return 0
    unknown = sorted(set(args.cases.split(",")) - set(CASES))
    if unknown:
        parser.error(f"--cases: {', '.join(unknown)} not among {', '.join(CASES)}")
    if args.profile or args.device == "cuda":
        return _profile_main(args)
    if args.op_timeline:
        from bench.host_replay_ops import _op_timeline_main

        return _op_timeline_main(args)
    import torch

    from bench.providers.common import cpu_model

    widths = tuple(int(w) for w in args.widths.split(","))
    if len(set(widths)) < 2:  # one width cannot be extrapolated (_fit_zero)
        parser.error(f"--widths: at least two different widths, got {args.widths!r}")
    result: dict = {"meta": {"torch": torch.__version__, "threads": 1, "rounds": args.rounds}}
    result["meta"]["cpu"] = cpu_model()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.cases.split(","):
            commit = COMMITS["step_1b" if kind == "host_speed" else kind]
            site = Path(tmp) / commit / "_site"
            if not site.exists():
                site = extract(commit, Path(tmp), args.archives)
            if kind == "host_speed":
                result[kind] = host_speed(site, args.rounds)
            else:
                result[kind] = replay(kind, site, widths, args.rounds)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _profile_main(args) -> int:
    import torch

    from bench.providers.common import cpu_model

    width = REAL if args.device == "cuda" else int(args.widths.split(",")[0])
    cases = [k for k in args.cases.split(",") if k in COMMITS]
    result: dict = {"meta": {"torch": torch.__version__, "cpu": cpu_model()}}
    if args.device == "cuda":
        result["meta"]["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in cases:
            site = extract(COMMITS[kind], Path(tmp), args.archives)
            result[kind] = profile_case(kind, site, args.device, width)
    from bench.host_replay_profile import profile_table

    table = profile_table(result)
    print(table)
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
