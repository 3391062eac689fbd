"""``bench_host_replay --op-timeline``: every op of one step that a CUDA run launches a kernel
for, recorded in fresh children at ``OP_WIDTHS`` (bench_host_replay's ``_OpRecorder``), aligned
op by op: its issue time since its sync-separated segment's start extrapolated to width 0, its
category, and its FLOPs and bytes at the run's own shapes (``_real_shape``): the stream
bench/step_model.py's calibration simulates. The parent's side only: the children never import
it."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from bench.bench_host_replay import COMMITS, _fit_zero, _run_child, extract
from bench.host_replay_cases import CLI_HIDDEN, STEP_1B_VOCAB
from bench.host_replay_record import ATTENTION_OPS, GEMMS, OP_CATEGORIES

# --op-timeline: the ops of one step at OP_WIDTHS, their issue times extrapolated to width 0
# and their work at the run's own shapes (bench/step_model.py's calibration simulates them).
# From 8 on the KV heads are a quarter of the heads as in both runs, and more than one (so
# the stand-ins' broadcast gradients reduce as at the run's shapes, and the ops align).
OP_WIDTHS = (8, 16)
# the step whose ops are kept: the CLI's timed step of the median tokens (7,646: CLI_STEPS'
# second), the 1.5B's first timed call (every call runs the same micro-batches)
OP_STEP = {"cli": 2, "step_1b": 1}
# the runs' hidden sizes, and the vocabulary the 1.5B replay shrinks (STEP_1B_VOCAB) as run
# (LLAMA_1B at 3d82f92: 2048, 128256; bench_engines' 1b: CLI_HIDDEN, its own 407 kept)
RUN_HIDDEN = {"cli": CLI_HIDDEN, "step_1b": 2048}
RUN_VOCAB = {"cli": None, "step_1b": (STEP_1B_VOCAB, 128256)}


def _real_shape(shapes: list[list[int]], widths, kind: str) -> list[int]:
    """One tensor's shape at the run's width, from its shapes at ``widths`` (two): a size
    that stays is kept (tokens, rows), the shrunk vocabulary restored; one that grows with
    the width as the width does (within the rounding of the CLI's MLP width, 22 and 43 at 8
    and 16) is the run's hidden size times its share (heads x head size 1 becomes the run's
    width in one dimension: the elements are right)."""
    (a, b), scale = shapes, RUN_HIDDEN[kind] / widths[1]
    vocab = RUN_VOCAB[kind]
    out = []
    for x, y in zip(a, b, strict=True):
        if x == y:
            out.append(vocab[1] if vocab and y == vocab[0] else y)
        elif x > 0 and abs(y * widths[0] - x * widths[1]) <= widths[1]:
            out.append(round(y * scale))
        else:
            raise ValueError(f"{kind}: a size {x} at width {widths[0]}, {y} at {widths[1]}")
    return out


def _work(op: list, kind: str, ops_at: list[list], widths) -> tuple[float, float]:
    """(FLOPs, bytes) of one op at the run's shapes: GEMMs 2 m n k, the attention the one
    count's 4 x width x sum L^2 forward and twice that backward; bytes of every tensor in
    and out."""
    import math

    def real(i: int, which: int) -> list[int]:
        return _real_shape([o[which][i][0] for o in ops_at], widths, kind)

    ins = [real(i, 3) for i in range(len(op[3]))]
    outs = [real(i, 4) for i in range(len(op[4]))]
    sizes = [t[1] for t in op[3]] + [t[1] for t in op[4]]
    nbytes = sum(math.prod(s) * size for s, size in zip(ins + outs, sizes, strict=True))
    flops = 0.0
    if op[0] in GEMMS:  # (bias,) a, b (, out=)
        first = 1 if op[0] not in ("mm", "bmm") else 0
        a, b = ins[first], ins[first + 1]
        flops = 2.0 * math.prod(a) * b[-1]
    elif op[0] in ATTENTION_OPS:
        q = ins[0] if op[0] == "_varlen_attn" else ins[1]
        flops = (4.0 if op[0] == "_varlen_attn" else 8.0) * math.prod(q[1:]) * op[5]
    return flops, float(nbytes)


def _step_cpu(events: list) -> float:
    """A recorded step's main-thread CPU, from its first mark to its last."""
    marks = [e[2] for e in events if e[0] == "mark"]
    return marks[-1] - marks[0]


def _split_step(events: list) -> list[tuple[str, float, float, list]]:
    """(name, start, end, ops) of each sync-separated segment of one recorded step."""
    out, start, ops = [], None, []
    for e in events:
        if e[0] != "mark":
            ops.append(e)
            continue
        if start is not None:
            out.append((f"{len(out)}: {start[0]} -> {e[1]}", start[1], e[2], ops))
        start, ops = (e[1], e[2]), []
    return out


def op_timeline(kind: str, site: Path, widths=OP_WIDTHS, rounds: int = 3) -> dict:
    """One recorded step per width (``_OpRecorder``; of ``rounds`` fresh processes the one
    whose step took the least CPU, as ``replay`` takes the least: this machine's load only
    adds), aligned op by op: per segment its host CPU and per op its issue time since the
    segment's start, each extrapolated to width 0 (``_fit_zero``), its category and work at
    the run's shapes (``_work``)."""

    def recorded(w: int) -> dict:
        tries = [_run_child(kind, site, w, record_ops=True) for _ in range(rounds)]
        return min(tries, key=lambda r: _step_cpu(r["op_steps"][OP_STEP[kind]]))

    runs = [recorded(w) for w in widths]
    steps = [_split_step(r["op_steps"][OP_STEP[kind]]) for r in runs]
    names = [[[op[0] for op in seg[3]] for seg in st] for st in steps]
    if any(n != names[0] for n in names):
        raise RuntimeError(f"{kind}: the recorded ops differ between widths {widths}")
    segments = []
    for j, seg in enumerate(steps[-1]):
        at = [st[j] for st in steps]
        host = round(_fit_zero(list(widths), [s[2] - s[1] for s in at])[0], 7)
        ops, last = [], 0.0
        for i, op in enumerate(seg[3]):
            issue, _ = _fit_zero(list(widths), [s[3][i][1] - s[1] for s in at])
            last = min(max(last, issue), host)  # in order, inside the segment
            flops, nbytes = _work(op, kind, [s[3][i] for s in at], widths)
            cat = OP_CATEGORIES.index(op[2])
            issue = min(round(last, 7), host)
            ops.append([issue, cat, float(f"{flops:.4g}"), float(f"{nbytes:.4g}")])
        segments.append({"name": seg[0], "host_s": host, "ops": ops})
    totals = {n: sum(s[2] - s[1] for s in st) for n, st in zip(widths, steps, strict=True)}
    return {
        "commit": COMMITS[kind],
        "widths": list(widths),
        "step": OP_STEP[kind],
        "recorder_per_op_s": [r["recorder_per_op_s"] for r in runs],
        "rounds": rounds,
        "recorded_main_cpu_s": totals,
        "categories": list(OP_CATEGORIES),
        "segments": segments,
    }


def _op_timeline_main(args) -> int:
    """``--op-timeline``: each case's ``op_timeline`` into --out (other keys kept)."""
    out = Path(args.out) if args.out else None
    result = json.loads(out.read_text()) if out and out.is_file() else {}
    timelines = result.setdefault("op_timeline", {})
    with tempfile.TemporaryDirectory() as tmp:
        for kind in (k for k in args.cases.split(",") if k in COMMITS):
            site = extract(COMMITS[kind], Path(tmp), args.archives)
            timelines[kind] = op_timeline(kind, site)
            segments = [round(s["host_s"], 4) for s in timelines[kind]["segments"]]
            print(json.dumps({"case": kind, "segments_host_s": segments}), flush=True)
    if out:  # each innermost list on one line (an op a line, not a number a line)
        text = json.dumps(result, indent=1)
        inner = re.compile(r"\[\s+([^\[\]{}]*?)\s+\]")
        text = inner.sub(lambda m: f"[{' '.join(m.group(1).split())}]", text)
        out.write_text(text + "\n")
    return 0
