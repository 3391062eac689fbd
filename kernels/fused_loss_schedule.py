"""Fused linear reflection loss: the chunked schedule, shared by both backends (the PyTorch row
maths, the CPU production path, is fused_loss_torch_rows.py).

Maths (docs/kernel-math.md). Rows r have hidden h_r (D), logits z_r = W h_r (V), p_r = softmax(z_r):
  loss = sum_r c_r (lse_r - z_r[y_r]) + sum_j k_j sum_v p_tv (log p_tv - log p_sv),  j = (t, s)
  d loss / d z_r = c_r (p_r - onehot(y_r)) + sum_{j: s_j = r} k_j (p_r - p_t(j))
(the teacher of a pair is detached from the KL: it keeps only its own CE gradient).

Schedule. Only loss rows are touched. They are laid out once per call as "slots" (``LossPlan``):
pairs in half-chunks whose slots are [teachers of the half, students of the half], so both rows
of a pair are in the same half; then rows with CE and no pair. A row in several pairs owns its
CE in exactly one slot (its first), so it is counted once. Per chunk of R slots (two halves a, b
sharing one (R, V) logits buffer):
  1. z = h W^T per half: a GEMM into the buffer in the input dtype (fp32 accumulation);
  2. the row maths per half (PyTorch: fused_loss_torch_rows.py; one Triton row kernel on the
     GPU) reads z once for lse, CE and KL and, when a gradient is wanted, once more to write
     d z over z in place; on CUDA on a side stream, so that half a's runs beside half b's
     logits GEMM and half b's beside half a's d h GEMM (the pipelined schedule of
     bench/roofline.py);
  3. d h = d z W per half into its rows of an (S, D) per-slot buffer, and d W (+)= d z^T h once
     for the chunk: GEMMs with fp32 accumulation; d W lives in the weight's dtype (one rounding
     per chunk; the first chunk's GEMM writes it, so it is never zeroed).
No atomics anywhere: per-slot d h is summed per row in a fixed order (the slots sorted by row)
in backward, which also applies the upstream gradient. Gradients are bitwise reproducible.
FLOPs: 6 R D V for R slots, as an unfused forward + backward. Extra memory: the (rows, V) logits
buffer (rows from a byte budget, independent of N), the (rows, D) gathered h, the (S, D)
per-slot d h and (S,)-sized plan vectors; ``bench/roofline.py`` models each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ChunkBudget:
    """How many slots one chunk holds: its (rows, V) logits take about ``logits_bytes``."""

    logits_bytes: int
    max_rows: int
    row_multiple: int  # GEMM-friendly row counts (pairs need an even count)

    def rows(self, vocab: int, elem_bytes: int) -> int:
        rows = min(self.max_rows, self.logits_bytes // (elem_bytes * max(vocab, 1)))
        rows -= rows % self.row_multiple
        return max(rows, 2)


# GPU: 512 MiB of bf16 logits = 2048 rows at V = 128K (8192 at V = 32K): GEMMs of M >= 2048 run
# near the tensor-core roof, W is streamed N / 2048 times, and the whole workspace stays under
# 1 GiB at N = 16K, D = 4K (bench/roofline.py). CPU: 64 MiB keeps the extra memory under 1/8 of
# the full-logit recipe at N = 4096 (bench/RESULTS.md).
GPU_BUDGET = ChunkBudget(logits_bytes=512 * 2**20, max_rows=8192, row_multiple=256)
CPU_BUDGET = ChunkBudget(logits_bytes=64 * 2**20, max_rows=2048, row_multiple=2)


def default_budget(device: torch.device) -> ChunkBudget:
    return GPU_BUDGET if device.type == "cuda" else CPU_BUDGET


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The row maths' and sums' dtype: fp32, or fp64 for fp64 inputs (float64 checks such as
    ``torch.autograd.gradcheck`` need the loss to float64's precision)."""
    return torch.promote_types(dtype, torch.float32)


def check_loss_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    check_indices: bool,
    ce_only_rows: torch.Tensor | None = None,
) -> None:
    """Raise ValueError naming the first bad argument. ``check_indices`` reads index ranges back
    to the host (a sync on CUDA), so it is the caller's choice there."""
    _check_shapes(hidden, weight, targets, ce_weight, kl_pairs, kl_weight, ce_only_rows)
    if check_indices:
        _check_indices(weight.shape[0], targets, ce_weight, kl_pairs, ce_only_rows)


def _check_shapes(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    ce_only_rows: torch.Tensor | None,
) -> None:
    """Shapes, dtypes and devices: no sync."""
    if hidden.dim() != 2 or not hidden.is_floating_point():
        raise ValueError(
            f"hidden: expected a (N, D) float tensor, got {tuple(hidden.shape)} {hidden.dtype}"
        )
    n, d = hidden.shape
    if weight.dim() != 2 or weight.shape[1] != d:
        raise ValueError(  # either may be the wrong one: name both
            f"weight: expected (V, D={d}), D being hidden's last dimension (hidden is "
            f"{tuple(hidden.shape)}), got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight: dtype {weight.dtype} differs from hidden's {hidden.dtype}")
    if weight.shape[0] == 0:
        raise ValueError("weight: the vocabulary is empty (V = 0)")
    if targets.shape != (n,) or targets.dtype != torch.int64:
        raise ValueError(
            f"targets: expected ({n},) int64, got {tuple(targets.shape)} {targets.dtype}"
        )
    if ce_weight.shape != (n,) or ce_weight.dtype != torch.float32:
        raise ValueError(
            f"ce_weight: expected ({n},) float32, got {tuple(ce_weight.shape)} {ce_weight.dtype}"
        )
    if kl_pairs.dim() != 2 or kl_pairs.shape[1] != 2 or kl_pairs.dtype != torch.int64:
        raise ValueError(
            f"kl_pairs: expected (P, 2) int64, got {tuple(kl_pairs.shape)} {kl_pairs.dtype}"
        )
    p = kl_pairs.shape[0]
    if kl_weight.shape != (p,) or kl_weight.dtype != torch.float32:
        raise ValueError(
            f"kl_weight: expected ({p},) float32, got {tuple(kl_weight.shape)} {kl_weight.dtype}"
        )
    if ce_only_rows is not None and (ce_only_rows.dim() != 1 or ce_only_rows.dtype != torch.int64):
        raise ValueError(
            f"ce_only_rows: expected (M,) int64, got {tuple(ce_only_rows.shape)} "
            f"{ce_only_rows.dtype}"
        )
    for name, t in (
        ("ce_only_rows", weight if ce_only_rows is None else ce_only_rows),
        ("weight", weight),
        ("targets", targets),
        ("ce_weight", ce_weight),
        ("kl_pairs", kl_pairs),
        ("kl_weight", kl_weight),
    ):
        if t.device != hidden.device:
            raise ValueError(f"{name}: on {t.device}, hidden on {hidden.device}")


def _check_indices(
    v: int,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    ce_only_rows: torch.Tensor | None,
) -> None:
    """Index ranges, ``v`` the vocabulary: host syncs on CUDA (one bool each), only made when
    the caller asks for the check there."""
    n, p = targets.shape[0], kl_pairs.shape[0]
    bad_target = ((targets != IGNORE_INDEX) & ((targets < 0) | (targets >= v))).any()
    if bool(bad_target):
        raise ValueError(f"targets: ids must lie in [0, V={v}) or be {IGNORE_INDEX}")
    if p > 0 and bool(((kl_pairs < 0) | (kl_pairs >= n)).any()):
        raise ValueError(f"kl_pairs: row indices must lie in [0, N={n})")
    if ce_only_rows is not None:
        m = ce_only_rows.shape[0]
        if m > 0 and bool((ce_only_rows < 0).any() | (ce_only_rows >= n).any()):
            raise ValueError(f"ce_only_rows: row indices must lie in [0, N={n})")
        if m > 1 and bool((ce_only_rows[1:] <= ce_only_rows[:-1]).any()):
            # a row given twice would have its CE counted twice
            raise ValueError("ce_only_rows: must be strictly ascending (each row once)")
        # Every row with a CE term alone must be given, and no given row may be in a pair.
        given = torch.zeros(n, dtype=torch.bool, device=targets.device)
        given[ce_only_rows] = True
        paired = pair_slot_owner(kl_pairs, n) < 2 * p
        alone = (targets != IGNORE_INDEX) & (ce_weight != 0) & ~paired
        if bool((alone & ~given).any() | (given & paired).any()):
            raise ValueError(
                "ce_only_rows: must hold every row with a CE term in no KL pair, and no paired row"
            )


def pair_slot_owner(kl_pairs: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(N,) int64: the first pair slot (2 j + side, side 0 teacher, 1 student) holding each row,
    or 2 P for rows in no pair. The owner slot carries the row's CE, so it is counted once."""
    p = kl_pairs.shape[0]
    owner = torch.full((n_rows,), 2 * p, dtype=torch.int64, device=kl_pairs.device)
    slots = torch.arange(2 * p, dtype=torch.int64, device=kl_pairs.device)
    return owner.scatter_reduce_(0, kl_pairs.reshape(-1), slots, reduce="amin")


@dataclass(frozen=True)
class Chunk:
    """Slots [start, stop); pairs: the slots are [teachers, students] of pairs [pair0, ...)."""

    start: int
    stop: int
    pairs: bool
    pair0: int = 0


@dataclass
class LossPlan:
    """The slot layout of one call (module docstring), built once on the device."""

    rows: torch.Tensor  # (S,) int64: the row of each slot
    targets: torch.Tensor  # (S,) int64: the slot's target, IGNORE_INDEX where it has no CE
    ce_weight: torch.Tensor  # (S,) fp32: 0 where the slot has no CE
    kl_weight: torch.Tensor  # (P,) fp32, contiguous
    chunks: list[Chunk]
    chunk_rows: int


def build_plan(
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    chunk_rows: int,
    ce_only_rows: torch.Tensor | None = None,
) -> LossPlan:
    """Slots and chunks. Pair slots are placed arithmetically (no sync); the CE-only rows are
    ``ce_only_rows`` when the caller knows them (a packed batch does, from the host), else
    found here, their count read once on the host (one sync on CUDA: it sizes the GEMMs)."""
    n = targets.shape[0]
    p = kl_pairs.shape[0]
    dev = targets.device
    half = max(1, chunk_rows // 2)  # pairs per chunk
    owner = pair_slot_owner(kl_pairs, n)
    # Pair j sits in chunk c = j // half holding m pairs: teacher slot 2a + i, student 2a + m + i.
    j = torch.arange(p, device=dev)
    a = j - j % half
    m = torch.clamp(p - a, max=half)
    pair_slot = torch.stack([a + j, a + j + m], 1)  # (P, 2): 2a + i = a + j
    solo = ce_only_rows
    if solo is None:
        solo = ((targets != IGNORE_INDEX) & (ce_weight != 0) & (owner == 2 * p)).nonzero()[:, 0]
    rows = torch.empty(2 * p + solo.shape[0], dtype=torch.int64, device=dev)
    rows[pair_slot.reshape(-1)] = kl_pairs.reshape(-1)
    rows[2 * p :] = solo
    # The slot's pair-side id (2 j + side) decides CE ownership; CE-only slots always own theirs.
    side_id = torch.full_like(rows, -1)
    side_id[pair_slot.reshape(-1)] = torch.arange(2 * p, device=dev)
    mine = (owner[rows] == side_id) | (torch.arange(rows.shape[0], device=dev) >= 2 * p)
    mine &= targets[rows] != IGNORE_INDEX
    chunks = [Chunk(2 * s, 2 * min(p, s + half), True, s) for s in range(0, p, half)]
    chunks += [
        Chunk(s, min(rows.shape[0], s + chunk_rows), False)
        for s in range(2 * p, rows.shape[0], chunk_rows)
    ]
    return LossPlan(
        rows=rows,
        targets=torch.where(mine, targets[rows], IGNORE_INDEX),
        ce_weight=torch.where(mine, ce_weight[rows], 0.0),
        kl_weight=kl_weight.contiguous(),  # the row kernel reads it at unit stride
        chunks=chunks,
        chunk_rows=chunk_rows,
    )


# A row op takes (z (R, V) in the input dtype, targets (R,), ce_weight (R,), kl_weight (R/2,) or
# None for a CE-only chunk, ce_out (R,) fp32, kl_out (R/2,) fp32, write_dz) and writes per-slot
# CE and per-pair KL; with write_dz it overwrites z with d loss / d z (upstream gradient 1).
RowOp = Callable[..., None]


class SideStream:
    """Where the row maths runs: on CUDA a second stream, so that it overlaps the GEMMs queued
    on the main one; elsewhere inline, in the same order (the same results, bit for bit)."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pending: list = []

    def run(self, fn: Callable[[], None]):
        """``fn()`` after all work queued so far on the main stream; a handle for ``wait``."""
        if self.stream is None:
            fn()
            return None
        ready = torch.cuda.current_stream().record_event()
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            fn()
            done = self.stream.record_event()
        self.pending.append(done)
        return done

    def wait(self, done) -> None:
        """The main stream waits for the work behind ``done``."""
        if done is not None:
            torch.cuda.current_stream().wait_event(done)
            self.pending.remove(done)

    def wait_all(self) -> None:
        for done in list(self.pending):
            self.wait(done)


def run_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    plan: LossPlan,
    row_op: RowOp,
    need_dh: bool,
    need_dw: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(ce sum, kl sum, per-slot d h (S, D) or None, d W (V, D) or None), upstream gradient 1.

    The plan's chunks are halves: two at a time share the logits buffer and one d W GEMM (one
    rounding of d W per pair of halves). Half a's row maths runs beside half b's logits GEMM,
    half b's beside half a's d h GEMM (``SideStream``)."""
    v, d = weight.shape
    s = plan.rows.shape[0]
    dev = hidden.device
    groups = [plan.chunks[g : g + 2] for g in range(0, len(plan.chunks), 2)]
    rows = max((h[-1].stop - h[0].start for h in groups), default=0)
    logits = torch.empty(rows, v, dtype=hidden.dtype, device=dev)
    h_buf = torch.empty(rows, d, dtype=hidden.dtype, device=dev)
    acc = accum_dtype(hidden.dtype)
    ce_out = torch.zeros(s, dtype=acc, device=dev)
    kl_out = torch.zeros(plan.kl_weight.shape[0], dtype=acc, device=dev)
    dh_slots = torch.empty(s, d, dtype=hidden.dtype, device=dev) if need_dh else None
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=dev) if need_dw else None
    side = SideStream(dev)
    write_dz = need_dh or need_dw
    for g, halves in enumerate(groups):
        base = halves[0].start
        done = []
        for c in halves:
            a, b = c.start - base, c.stop - base
            torch.index_select(hidden, 0, plan.rows[c.start : c.stop], out=h_buf[a:b])
            z = torch.mm(h_buf[a:b], weight.T, out=logits[a:b])
            done.append(side.run(_row_call(row_op, z, plan, c, ce_out, kl_out, write_dz)))
        for c, handle in zip(halves, done, strict=True):
            side.wait(handle)
            if dh_slots is not None:
                z = logits[c.start - base : c.stop - base]
                torch.mm(z, weight, out=dh_slots[c.start : c.stop])
        if dw is not None:
            r = halves[-1].stop - base
            if g == 0:  # the first d W GEMM writes d W: no zeroing pass
                torch.mm(logits[:r].T, h_buf[:r], out=dw)
            else:
                dw.addmm_(logits[:r].T, h_buf[:r])
    side.wait_all()
    if dw is not None and not plan.chunks:
        dw.zero_()
    return ce_out.sum(), kl_out.sum(), dh_slots, dw


def _row_call(row_op, z, plan: LossPlan, c: Chunk, ce_out, kl_out, write_dz):
    """The row maths of chunk ``c`` on its logits ``z``, as a call for ``SideStream.run``."""
    kw = kl_out_c = None
    if c.pairs:
        r = c.stop - c.start
        kw = plan.kl_weight[c.pair0 : c.pair0 + r // 2]
        kl_out_c = kl_out[c.pair0 : c.pair0 + r // 2]
    tgt, cw = plan.targets[c.start : c.stop], plan.ce_weight[c.start : c.stop]
    ce_c = ce_out[c.start : c.stop]
    return lambda: row_op(z, tgt, cw, kw, ce_c, kl_out_c, write_dz)
