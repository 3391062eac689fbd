"""The loss alone with the softmax statistics in the logits GEMM's epilogue: logits never stored.

Maths (docs/kernel-math.md, "The forward alone, statistics in the GEMM's epilogue"). A chunk's
gathered hidden rows H (R, D) are [teachers, students] for pairs (R = 2A) or A CE-only rows.
Program (i, j) computes the logit tiles z = H W^T of its BLOCK_M rows (and, for pairs, of their
BLOCK_M students) and vocabulary tile j over K = D with fp32 accumulation, rounds them to the
input dtype (the values the GEMM-then-rows path stores and reads back), and writes per row and
tile: m = max z, s = sum exp(z - m), the target logit (0 where the target is in another tile)
and, per pair, c = sum exp(z_t - m_t) (z_t - z_s). ``finish_chunk`` folds the tiles in a fixed
order: M = max_j m_j, S = sum_j s_j exp(m_j - M), lse = M + log S, C = sum_j c_j exp(m_tj - M_t),
KL = k (C / S_t - lse_t + lse_s), CE = c (lse - z_y). No atomics: bitwise reproducible.
Memory per chunk: the gathered rows and (7 or 3, A, ceil(V / BLOCK_V)) fp32 statistics (14 MiB
at 1024 slots, V = 128256), instead of the (R, V) logits. FLOPs 2 R D V, on tensor cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .fused_loss_rows import tanh
from .fused_loss_schedule import LossPlan

PAIR_STATS = 7  # m_t, s_t, z_t[y_t], m_s, s_s, z_s[y_s], c
CE_STATS = 3  # m, s, z[y]


@dataclass(frozen=True)
class GemmTiles:
    """Tile sizes of the statistics GEMM. Production values below; tests pass small ones."""

    block_m: int = 64  # rows (pairs: teacher rows, plus as many students) per program
    block_v: int = 128  # vocabulary columns per program: one statistics column
    block_k: int = 64  # hidden columns per step of the K loop
    num_warps: int = 8
    num_stages: int = 3


GEMM_TILES = GemmTiles()
# fp32 inputs multiply on the FMA units ("ieee"): smaller tiles, no spills on sm_80 or sm_90.
GEMM_TILES_FP32 = GemmTiles(block_m=32, block_v=64, block_k=32, num_warps=4, num_stages=2)


def gemm_tiles_for(dtype: torch.dtype) -> GemmTiles:
    return GEMM_TILES_FP32 if dtype == torch.float32 else GEMM_TILES


@triton.jit
def _tile_stats(acc, in_v, cols, tgt, CAP, OUT_TY: tl.constexpr, SOFTCAP: tl.constexpr):
    """(z rounded to the input dtype, then soft-capped to c tanh(z / c) with SOFTCAP, its max
    over V, exp(z - max) (0 outside V), target logit)."""
    z = acc.to(OUT_TY).to(tl.float32)
    if SOFTCAP:
        z = CAP * tanh(z / CAP)
    m = tl.max(tl.where(in_v[None, :], z, float("-inf")), axis=1)
    e = tl.where(in_v[None, :], tl.exp(z - m[:, None]), 0.0)
    zy = tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
    return z, m, e, zy


@triton.jit
def _logits_stats_kernel(
    H_ptr,  # (R, D) gathered hidden rows of the chunk, input dtype
    W_ptr,  # (V, D) LM head, input dtype
    Tgt_ptr,  # (R,) int64: target of each slot, -100 = none
    Stats_ptr,  # (7 or 3, A, NT) fp32 out, NT = programs along axis 1
    A,  # rows per side: pairs in the chunk, or CE-only rows
    V,  # vocabulary size
    D,  # hidden size
    H_stride,  # row stride of H
    W_stride,  # row stride of W
    CAP,  # SOFTCAP: the final-logit soft cap c
    PAIRS: tl.constexpr,  # rows i < A are teachers, A + i their students
    SOFTCAP: tl.constexpr,  # the logits are c tanh(z / c) (Gemma 2); off: not compiled in
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs; ignored for 16-bit ones
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (row block, vocabulary tile): the logit tiles over K = D, then their statistics."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    ks = tl.arange(0, BLOCK_K)
    in_m = rows < A
    in_v = cols < V
    rows64 = rows.to(tl.int64)
    ha = H_ptr + rows64[:, None] * H_stride
    hb = H_ptr + (rows64 + A)[:, None] * H_stride
    w = W_ptr + cols.to(tl.int64)[:, None] * W_stride
    acc_a = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
    acc_b = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        in_k = ks < D - k0
        wt = tl.trans(tl.load(w + k0 + ks[None, :], mask=in_v[:, None] & in_k[None, :], other=0.0))
        mask_h = in_m[:, None] & in_k[None, :]
        a = tl.load(ha + k0 + ks[None, :], mask=mask_h, other=0.0)
        acc_a = tl.dot(a, wt, acc_a, input_precision=DOT_PRECISION)
        if PAIRS:
            b = tl.load(hb + k0 + ks[None, :], mask=mask_h, other=0.0)
            acc_b = tl.dot(b, wt, acc_b, input_precision=DOT_PRECISION)
    nt = tl.num_programs(1)
    out = Stats_ptr + rows64 * nt + tl.program_id(1)
    plane = nt.to(tl.int64) * A
    ty = H_ptr.dtype.element_ty
    tgt_a = tl.load(Tgt_ptr + rows64, mask=in_m, other=-1)
    za, m_a, e_a, zy_a = _tile_stats(acc_a, in_v, cols, tgt_a, CAP, ty, SOFTCAP)
    tl.store(out, m_a, mask=in_m)
    tl.store(out + plane, tl.sum(e_a, axis=1), mask=in_m)
    tl.store(out + 2 * plane, zy_a, mask=in_m)
    if PAIRS:
        tgt_b = tl.load(Tgt_ptr + rows64 + A, mask=in_m, other=-1)
        zb, m_b, e_b, zy_b = _tile_stats(acc_b, in_v, cols, tgt_b, CAP, ty, SOFTCAP)
        c = tl.sum(e_a * (za - zb), axis=1)  # e_a is 0 outside V, where z is 0
        tl.store(out + 3 * plane, m_b, mask=in_m)
        tl.store(out + 4 * plane, tl.sum(e_b, axis=1), mask=in_m)
        tl.store(out + 5 * plane, zy_b, mask=in_m)
        tl.store(out + 6 * plane, c, mask=in_m)


def _fold(m: torch.Tensor, *sums: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per row: the tiles' max M and each (A, NT) sum rescaled to it, folded over the tiles."""
    big = m.amax(1)
    scale = torch.exp(m - big[:, None])
    return (big, *((x * scale).sum(1) for x in sums))


def finish_chunk(stats, ce_w, kl_w, ce_out, kl_out) -> None:
    """CE per slot and KL per pair of one chunk from its tile statistics (fixed order)."""
    big_a, s_a, *c = _fold(stats[0], stats[1], *stats[6:])
    lse_a = big_a + torch.log(s_a)
    a = stats.shape[1]
    cw_a = ce_w[:a]
    ce_out[:a] = torch.where(cw_a != 0, cw_a * (lse_a - stats[2].sum(1)), 0.0)
    if kl_w is None:
        return
    big_b, s_b = _fold(stats[3], stats[4])
    lse_b = big_b + torch.log(s_b)
    cw_b = ce_w[a:]
    ce_out[a:] = torch.where(cw_b != 0, cw_b * (lse_b - stats[5].sum(1)), 0.0)
    kl_out.copy_(torch.where(kl_w != 0, kl_w * (c[0] / s_a - lse_a + lse_b), 0.0))


def stats_loss(hidden, weight, plan: LossPlan, tiles: GemmTiles | None = None, softcap=None):
    """(ce sum, kl sum) of ``plan``: per chunk one statistics GEMM launch, then the fold.
    ``tiles``: the dtype's production tiles unless given (tests); ``softcap``: the logits'
    soft cap c (None: none)."""
    tiles = tiles or gemm_tiles_for(hidden.dtype)
    v, d = weight.shape
    dev = hidden.device
    ce_out = torch.zeros(plan.rows.shape[0], dtype=torch.float32, device=dev)
    kl_out = torch.zeros(plan.kl_weight.shape[0], dtype=torch.float32, device=dev)
    precision = "ieee" if hidden.dtype == torch.float32 else "tf32"
    nt = triton.cdiv(v, tiles.block_v)
    rows = max((c.stop - c.start for c in plan.chunks), default=0)
    # One buffer each for every chunk (stream order keeps them apart): h and the statistics.
    h_buf = torch.empty(rows, d, dtype=hidden.dtype, device=dev)
    stats_size = max(PAIR_STATS * (rows // 2), CE_STATS * rows) * nt
    stats_buf = torch.empty(stats_size, dtype=torch.float32, device=dev)
    for c in plan.chunks:
        h = torch.index_select(
            hidden, 0, plan.rows[c.start : c.stop], out=h_buf[: c.stop - c.start]
        )
        a = h.shape[0] // 2 if c.pairs else h.shape[0]
        planes = PAIR_STATS if c.pairs else CE_STATS
        stats = stats_buf[: planes * a * nt].view(planes, a, nt)
        _logits_stats_kernel[(triton.cdiv(a, tiles.block_m), nt)](
            h, weight, plan.targets[c.start : c.stop], stats, a, v, d, h.stride(0),
            weight.stride(0), float(softcap or 0.0), PAIRS=c.pairs,
            SOFTCAP=softcap is not None, DOT_PRECISION=precision, BLOCK_M=tiles.block_m,
            BLOCK_V=tiles.block_v, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps,
            num_stages=tiles.num_stages,
        )  # fmt: skip
        kw = kl_out_c = None
        if c.pairs:
            kw = plan.kl_weight[c.pair0 : c.pair0 + a]
            kl_out_c = kl_out[c.pair0 : c.pair0 + a]
        cw = plan.ce_weight[c.start : c.stop]
        finish_chunk(stats, cw, kw, ce_out[c.start : c.stop], kl_out_c)
    return ce_out.sum(), kl_out.sum()


def _compile_specs() -> list[dict]:
    """Production launches at the headline shape (D = 4096, V = 128256, 1024-slot halves) for
    bench/compile_check.py, arguments as ``stats_loss`` passes them."""
    d, v, rows = 4096, 128256, 1024
    specs = []
    for name, dtype, precision in (
        ("bf16", torch.bfloat16, "tf32"),
        ("fp32", torch.float32, "ieee"),
    ):
        x = torch.empty(16, dtype=dtype)
        tiles = gemm_tiles_for(dtype)
        for pairs in (True, False):
            args = dict(H_ptr=x, W_ptr=x, Tgt_ptr=torch.empty(16, dtype=torch.int64))
            args |= dict(Stats_ptr=torch.empty(16, dtype=torch.float32))
            args |= dict(A=rows // 2 if pairs else rows, V=v, D=d, H_stride=d, W_stride=d)
            args |= dict(CAP=0.0, PAIRS=pairs, SOFTCAP=False, DOT_PRECISION=precision)
            args |= dict(BLOCK_M=tiles.block_m)
            args |= dict(BLOCK_V=tiles.block_v, BLOCK_K=tiles.block_k)
            specs.append(
                {
                    "name": f"logits_stats/{'pairs' if pairs else 'ce_only'}/{name}",
                    "kernel": _logits_stats_kernel,
                    "args": args,
                    "num_warps": tiles.num_warps,
                    "num_stages": tiles.num_stages,
                }
            )
    return specs


COMPILE_SPECS = _compile_specs()
