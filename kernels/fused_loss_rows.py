"""The fused loss's row kernel: one read of each chunk's logit rows for lse, CE and KL, and
one more to write d z over them (the maths: fused_loss.py's docstring, docs/kernel-math.md).
``triton_row_op`` is its ``RowOp`` for ``fused_loss_schedule.run_chunks``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class RowTiles:
    """Tile sizes of the two Triton kernels. Production values below; tests pass small ones."""

    block_v: int = 2048  # logits per row-kernel iteration: 8 fp32 per thread per row at 8 warps
    block_d: int = 1024  # columns of d h per slot-sum program
    num_warps: int = 8


TILES = RowTiles()


@triton.jit
def tanh(x):
    """tanh(x) from one exp (Triton's core has no tanh): +-1 at the extremes, never NaN."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _reflection_rows_kernel(
    Z_ptr,  # (R, V) logits of the chunk, input dtype; overwritten by d z when WRITE_DZ
    Tgt_ptr,  # (R,) int64: target of each slot, -100 = no CE
    CW_ptr,  # (R,) fp32: CE weight of each slot (0 where no CE)
    KW_ptr,  # (R / 2,) fp32: KL weight of each pair (PAIRS only)
    CE_ptr,  # (R,) fp32 out: c * CE of each slot
    KL_ptr,  # (R / 2,) fp32 out: k * KL of each pair (PAIRS only)
    V,  # vocabulary size
    Z_stride,  # row stride of Z
    HALF,  # PAIRS: slot of the first student (= pairs in the chunk)
    CAP,  # SOFTCAP: the final-logit soft cap c
    PAIRS: tl.constexpr,  # program i takes teacher slot i and student slot HALF + i
    WRITE_DZ: tl.constexpr,
    SOFTCAP: tl.constexpr,  # the logits are c tanh(z / c) (Gemma 2); off: not compiled in
    BLOCK_V: tl.constexpr,
):
    """One program per pair (or per CE-only row): pass 1 online (m, S) per row, the target
    logit and, per pair, C = sum exp(z_t - m_t) (z_t - z_s); pass 2 writes d z over z. With
    SOFTCAP both passes read z as c tanh(z / c), and d z carries tanh's derivative 1 - tanh^2."""
    i = tl.program_id(0).to(tl.int64)
    b_slot = HALF + i if PAIRS else i
    za_row = Z_ptr + i * Z_stride
    zb_row = Z_ptr + b_slot * Z_stride
    tgt_a = tl.load(Tgt_ptr + i)
    tgt_b = tl.load(Tgt_ptr + b_slot)
    cols = tl.arange(0, BLOCK_V)
    m_a = float("-inf")
    m_b = float("-inf")
    s_a = 0.0
    s_b = 0.0
    zy_a = 0.0
    zy_b = 0.0
    c_ab = 0.0
    for v0 in range(0, V, BLOCK_V):
        in_v = cols < V - v0
        za = tl.load(za_row + v0 + cols, mask=in_v, other=0.0).to(tl.float32)
        if SOFTCAP:
            za = CAP * tanh(za / CAP)
        m_a_new = tl.maximum(m_a, tl.max(tl.where(in_v, za, float("-inf")), axis=0))
        e_a = tl.where(in_v, tl.exp(za - m_a_new), 0.0)
        scale_a = tl.exp(m_a - m_a_new)
        s_a = s_a * scale_a + tl.sum(e_a, axis=0)
        zy_a += tl.sum(tl.where(cols == tgt_a - v0, za, 0.0), axis=0)
        if PAIRS:
            zb = tl.load(zb_row + v0 + cols, mask=in_v, other=0.0).to(tl.float32)
            if SOFTCAP:
                zb = CAP * tanh(zb / CAP)
            m_b_new = tl.maximum(m_b, tl.max(tl.where(in_v, zb, float("-inf")), axis=0))
            e_b = tl.where(in_v, tl.exp(zb - m_b_new), 0.0)
            s_b = s_b * tl.exp(m_b - m_b_new) + tl.sum(e_b, axis=0)
            zy_b += tl.sum(tl.where(cols == tgt_b - v0, zb, 0.0), axis=0)
            c_ab = c_ab * scale_a + tl.sum(e_a * (za - zb), axis=0)
            m_b = m_b_new
        m_a = m_a_new
    lse_a = m_a + tl.log(s_a)
    cw_a = tl.load(CW_ptr + i)
    tl.store(CE_ptr + i, tl.where(cw_a != 0, cw_a * (lse_a - zy_a), 0.0))
    lse_b = 0.0
    cw_b = 0.0
    kw = 0.0
    if PAIRS:
        lse_b = m_b + tl.log(s_b)
        cw_b = tl.load(CW_ptr + b_slot)
        kw = tl.load(KW_ptr + i)
        tl.store(CE_ptr + b_slot, tl.where(cw_b != 0, cw_b * (lse_b - zy_b), 0.0))
        tl.store(KL_ptr + i, tl.where(kw != 0, kw * (c_ab / s_a - lse_a + lse_b), 0.0))
    if WRITE_DZ:
        for v0 in range(0, V, BLOCK_V):
            in_v = cols < V - v0
            za = tl.load(za_row + v0 + cols, mask=in_v, other=0.0).to(tl.float32)
            if SOFTCAP:
                t_a = tanh(za / CAP)
                za = CAP * t_a
            p_a = tl.exp(za - lse_a)
            dz_a = cw_a * (p_a - tl.where(cols == tgt_a - v0, 1.0, 0.0))
            if SOFTCAP:
                dz_a = dz_a * (1.0 - t_a * t_a)
            if PAIRS:
                zb = tl.load(zb_row + v0 + cols, mask=in_v, other=0.0).to(tl.float32)
                if SOFTCAP:
                    t_b = tanh(zb / CAP)
                    zb = CAP * t_b
                p_b = tl.exp(zb - lse_b)
                # students: c (p_s - onehot) + k (p_s - p_t); teachers get nothing from the KL
                dz_b = cw_b * (p_b - tl.where(cols == tgt_b - v0, 1.0, 0.0)) + kw * (p_b - p_a)
                if SOFTCAP:
                    dz_b = dz_b * (1.0 - t_b * t_b)
                tl.store(zb_row + v0 + cols, dz_b.to(Z_ptr.dtype.element_ty), mask=in_v)
            tl.store(za_row + v0 + cols, dz_a.to(Z_ptr.dtype.element_ty), mask=in_v)


def triton_row_op(tiles: RowTiles, softcap: float | None = None):
    """The row maths as one launch of the Triton row kernel per chunk (a ``RowOp``); logits
    soft-capped at ``softcap`` (None: the kernel without it)."""

    def row_op(z, targets, ce_w, kl_w, ce_out, kl_out, write_dz) -> None:
        r, v = z.shape
        pairs = kl_w is not None
        _reflection_rows_kernel[(r // 2 if pairs else r,)](
            z,
            targets,
            ce_w,
            kl_w if pairs else ce_w,
            ce_out,
            kl_out if pairs else ce_out,
            v,
            z.stride(0),
            r // 2 if pairs else 0,
            float(softcap or 0.0),
            PAIRS=pairs,
            WRITE_DZ=write_dz,
            SOFTCAP=softcap is not None,
            BLOCK_V=tiles.block_v,
            num_warps=tiles.num_warps,
        )

    return row_op


def triton_interpreted() -> bool:
    """True when the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_reflection_rows_kernel, triton.runtime.JITFunction)


def row_kernel_specs(name: str, dtype: torch.dtype, v: int, rows: int) -> list[dict]:
    """The row kernel's production launches in ``dtype`` (pairs and CE-only) at vocabulary
    ``v`` and ``rows``-slot halves, for fused_loss.COMPILE_SPECS."""
    z = torch.empty(16, dtype=dtype)
    i64 = torch.empty(16, dtype=torch.int64)
    f32 = torch.empty(16, dtype=torch.float32)
    specs = []
    for pairs in (True, False):
        args = dict(Z_ptr=z, Tgt_ptr=i64, CW_ptr=f32, KW_ptr=f32, CE_ptr=f32, KL_ptr=f32)
        args |= dict(V=v, Z_stride=v, HALF=rows // 2 if pairs else 0, CAP=0.0)
        args |= dict(PAIRS=pairs, WRITE_DZ=True, SOFTCAP=False, BLOCK_V=TILES.block_v)
        specs.append(
            {
                "name": f"reflection_rows/{'pairs' if pairs else 'ce_only'}/{name}",
                "kernel": _reflection_rows_kernel,
                "args": args,
                "num_warps": TILES.num_warps,
            }
        )
    return specs
