"""Triton: dynamic-mask application and compaction of student sequences (SPEC §3), on the device.

Kept as a measured alternative, not used by training: the trainer draws and applies each step's
masks on the host (``data.masking.apply_masks_host``) on its background thread while the previous
step computes, so the step never waits for it (on a lent H200 the un-overlapped host wait was at
most 9e-6 of a step; bench/RESULTS.md). This kernel is 184x faster than the host path (0.076 ms
against 13.96 ms for 512 samples on an H200), but it would only move work that is already off
the critical path onto the device. ``bench/test_mask.py`` times both; tests/test_mask.py checks
it against the plain reference.

The host draws the random choices (data/masking.py: a per-token ``key`` and a per-sample
``threshold``); this kernel does the per-token work on the device. For sample s, position p:

    hidden(p) = p < start_s  or  p == end_s  or  (start_s <= p < end_s and key[p] < thr_s)

and the visible tokens are compacted (prefix sum) into the student sequence at the host-known
offset ``out_offsets[s]``: gather index, input id, original position id, student label.
Bytes: reads 8 + 8 + 4 bytes per teacher token, writes 32 bytes per student token; no FLOPs
to speak of. One program per sample walks its tokens in BLOCK tiles, carrying the count.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A tile of 1024 tokens keeps the cumsum in registers (4 warps x 32 lanes x 8 elements);
# samples are at most a few thousand tokens, so a handful of tiles per program.
MAX_BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _apply_mask_kernel(
    # pointers
    ids_ptr,  # (T,) int64: the samples' ids, concatenated
    labels_ptr,  # (T,) int64: their student labels
    keys_ptr,  # (T,) int32: per-token key; a body token is hidden iff key < threshold
    offsets_ptr,  # (S+1,) int64: sample offsets into T
    starts_ptr,  # (S,) int64: body start (position of the first hidden-by-strategy candidate)
    ends_ptr,  # (S,) int64: body end (always hidden; -1: nothing hidden)
    thresholds_ptr,  # (S,) int64
    out_offsets_ptr,  # (S+1,) int64: student offsets into Ts (host-computed lengths)
    gather_ptr,  # (Ts,) int64 out: index into T of each student token
    out_ids_ptr,  # (Ts,) int64 out
    out_pos_ptr,  # (Ts,) int64 out: original position in the sample
    out_labels_ptr,  # (Ts,) int64 out
    # constants
    BLOCK: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    lo = tl.load(offsets_ptr + s)
    n = tl.load(offsets_ptr + s + 1) - lo
    start = tl.load(starts_ptr + s)
    end = tl.load(ends_ptr + s)
    thr = tl.load(thresholds_ptr + s)
    out = tl.load(out_offsets_ptr + s)
    count = tl.zeros((), dtype=tl.int64)
    for i in range(0, n, BLOCK):
        p = i + tl.arange(0, BLOCK).to(tl.int64)
        inb = p < n
        key = tl.load(keys_ptr + lo + p, mask=inb, other=0).to(tl.int64)
        body = (p >= start) & (p < end)
        hidden = (p < start) | (p == end) | (body & (key < thr))
        vis = inb & (hidden == 0)
        v = vis.to(tl.int64)
        dst = out + count + tl.cumsum(v, 0) - 1  # prefix sum: the compacted slot
        tok = tl.load(ids_ptr + lo + p, mask=vis, other=0)
        lab = tl.load(labels_ptr + lo + p, mask=vis, other=0)
        tl.store(gather_ptr + dst, lo + p, mask=vis)
        tl.store(out_ids_ptr + dst, tok, mask=vis)
        tl.store(out_pos_ptr + dst, p, mask=vis)
        tl.store(out_labels_ptr + dst, lab, mask=vis)
        count += tl.sum(v, 0)


def apply_reflection_mask(
    ids: torch.Tensor,
    student_labels: torch.Tensor,
    keys: torch.Tensor,
    offsets: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    thresholds: torch.Tensor,
    out_offsets: torch.Tensor,
    total_out: int,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compact the students of S samples on the device.

    ids, student_labels: (T,) int64; keys: (T,) int32; offsets, out_offsets: (S+1,) int64;
    starts, ends, thresholds: (S,) int64; ``total_out`` = out_offsets[-1], passed from the host
    so no sync is needed. ``block_size``: tokens per tile (a power of two; default
    min(1024, next_power_of_2(T))). Returns (gather, input_ids, position_ids, labels), each
    (Ts,) int64.
    """
    n_samples = starts.numel()
    total = ids.numel()
    if ids.dtype != torch.int64 or student_labels.dtype != torch.int64:
        raise ValueError("ids, student_labels: must be int64")
    if student_labels.shape != ids.shape or keys.shape != ids.shape:
        raise ValueError(
            f"student_labels, keys: must match ids {tuple(ids.shape)}, got "
            f"{tuple(student_labels.shape)} and {tuple(keys.shape)}"
        )
    if keys.dtype != torch.int32:
        raise ValueError(f"keys: must be int32, got {keys.dtype}")
    for name, t in (("ends", ends), ("thresholds", thresholds)):
        if t.shape != (n_samples,):
            raise ValueError(f"{name}: expected ({n_samples},), got {tuple(t.shape)}")
    for name, t in (("offsets", offsets), ("out_offsets", out_offsets)):
        if t.shape != (n_samples + 1,):
            raise ValueError(f"{name}: expected ({n_samples + 1},), got {tuple(t.shape)}")
    if total_out < 0 or total_out > total:
        raise ValueError(f"total_out: must be in [0, {total}], got {total_out}")
    device = ids.device
    out = [torch.empty(total_out, dtype=torch.int64, device=device) for _ in range(4)]
    if n_samples == 0 or total_out == 0:
        return tuple(out)
    block = block_size or min(MAX_BLOCK, triton.next_power_of_2(max(total, 16)))
    if block & (block - 1) or not 16 <= block <= MAX_BLOCK:
        raise ValueError(f"block_size: must be a power of two in [16, {MAX_BLOCK}], got {block}")
    i64 = lambda t: t.to(device=device, dtype=torch.int64).contiguous()
    _apply_mask_kernel[(n_samples,)](
        ids.contiguous(),
        student_labels.contiguous(),
        keys.contiguous(),
        i64(offsets),
        i64(starts),
        i64(ends),
        i64(thresholds),
        i64(out_offsets),
        *out,
        BLOCK=block,
        num_warps=NUM_WARPS,
    )
    return tuple(out)


# For bench/compile_check.py (ahead-of-time compile for sm_80 / sm_90): the kernel, its
# argument types, and the constexpr values it ships with.
COMPILE_SPECS = [
    {
        "name": "apply_reflection_mask",
        "kernel": _apply_mask_kernel,
        "signature": {
            "ids_ptr": "*i64",
            "labels_ptr": "*i64",
            "keys_ptr": "*i32",
            "offsets_ptr": "*i64",
            "starts_ptr": "*i64",
            "ends_ptr": "*i64",
            "thresholds_ptr": "*i64",
            "out_offsets_ptr": "*i64",
            "gather_ptr": "*i64",
            "out_ids_ptr": "*i64",
            "out_pos_ptr": "*i64",
            "out_labels_ptr": "*i64",
            "BLOCK": "constexpr",
        },
        "constexprs": {"BLOCK": MAX_BLOCK},
        "num_warps": NUM_WARPS,
    }
]
