"""Fused linear reflection loss: teacher CE + student CE + KL straight from hidden states.

Maths (KERNEL-MATH.md). Rows r: h_r (D), z_r = W h_r (V, never stored whole), p_r = softmax(z_r).
  loss = sum_r c_r (lse_r - z_r[y_r]) + sum_j k_j (E_pt[z_t - z_s] - lse_t + lse_s),  j = (t, s)
  d loss / d z_r = g (c_r (p_r - onehot(y_r)) + sum_{j: s_j = r} k_j (p_r - p_t(j)))
  d h_r = sum_v dz_rv W_v,  d W_v = sum_r dz_rv h_r.   (The teacher is detached from the KL.)

Layout ("slots"). Only loss rows are touched, and both rows of a pair sit in the same row block:
the work is a list of blocks of 2 * BLOCK_H slots, each slot holding a row index (-1 = empty):
  pair blocks: slots [0, BLOCK_H) = teachers, [BLOCK_H, 2 BLOCK_H) = students of BLOCK_H pairs;
  solo blocks: rows with CE and no pair, packed first (sorted on the device, no host sync);
               blocks past the last such row find only -1 and return at once.
A row in several pairs owns its CE in one slot (the first), so it is counted once.

Forward: one program per block, one pass over V tiles; per tile two GEMM tiles (teachers,
students) with fp32 accumulation, then online statistics (m, S) per row and, per pair,
C = sum exp(z_t - m_t) (z_t - z_s), so KL = C / S_t - lse_t + lse_s. Writes lse per slot.
Backward: one program per (V tile, block), V tile slowest so concurrent programs share W's tile
in L2; recomputes the two logit tiles, forms dz, and adds dz W and dz^T h into fp32 dh and dW
with atomics (dz never leaves the chip; no (rows, V) tensor exists anywhere).
FLOPs: forward 2 R D V, backward 6 R D V (recompute, dh, dW), R = slots; bytes: W is read once
per block in the forward and twice per (block, V tile) pair in the backward (L2-resident).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .fused_loss_torch import (
    IGNORE_INDEX,
    check_loss_inputs,
    pair_slot_owner,
    torch_linear_reflection_loss,
)

BACKENDS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class LossBlocks:
    """Tile sizes of one launch. Production values below; tests pass small ones."""

    block_h: int = 64  # pairs (or solo rows) per half block: 128 rows per block
    block_v: int = 128  # vocabulary tile
    block_d: int = 32  # reduction tile over D
    num_warps: int = 8
    num_stages: int = 3


# Production tiles, chosen with bench/compile_check.py (registers, stack, shared memory on sm_80
# and sm_90): 128 rows x 128 vocabulary columns per program, two 64 x 128 fp32 accumulators
# (64 registers/thread at 8 warps). BLOCK_D = 32 rather than 64: at 64 the epilogue's
# temporaries spilled 400-900 B of stack per thread; at 32 the bf16 kernels spill 0-216 B.
# Shared memory per stage: 2 x (64 x 32) + (128 x 32) bf16 = 16 KiB; 3 stages fit either card.
# fp32 inputs (exact "ieee" products, FMA path, tests and second opinion only) use smaller tiles.
# The backward must use the forward's block_h: lse is stored per slot.
FWD_BLOCKS = {
    torch.bfloat16: LossBlocks(block_h=64, block_v=128, block_d=32, num_warps=8, num_stages=3),
    torch.float16: LossBlocks(block_h=64, block_v=128, block_d=32, num_warps=8, num_stages=3),
    torch.float32: LossBlocks(block_h=32, block_v=64, block_d=16, num_warps=4, num_stages=2),
}
BWD_BLOCKS = dict(FWD_BLOCKS)
# fp32 inputs: exact fp32 products, as torch's default matmul (no TF32). For bf16 / fp16 the
# setting is moot (tensor cores multiply them exactly, accumulating in fp32).
PRECISION = {torch.bfloat16: "ieee", torch.float16: "ieee", torch.float32: "ieee"}


@triton.jit
def _logit_tiles(
    w_tile,  # pointer: row v0 of W (V, D)
    W_stride,  # row stride of W
    cols,  # (BLOCK_V,) int32 column offsets inside the tile
    in_v,  # (BLOCK_V,) columns inside the vocabulary
    h_rows_a,  # (BLOCK_H,) pointers: rows of the first half block
    used_a,  # (BLOCK_H,) slots in use
    h_rows_b,  # (BLOCK_H,) pointers: rows of the second half block
    used_b,  # (BLOCK_H,) slots in use
    D,  # hidden size
    BLOCK_H: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """z = h W^T for both half blocks on one vocabulary tile (fp32 accumulation); the forward
    and the backward recompute the same two tiles, so they share this."""
    z_a = tl.zeros((BLOCK_H, BLOCK_V), tl.float32)
    z_b = tl.zeros((BLOCK_H, BLOCK_V), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        in_d = offs_d < D
        w = tl.load(
            w_tile + cols[:, None] * W_stride + offs_d[None, :],
            mask=in_v[:, None] & in_d[None, :],
            other=0.0,
        )
        h_a = tl.load(
            h_rows_a[:, None] + offs_d[None, :], mask=used_a[:, None] & in_d[None, :], other=0.0
        )
        h_b = tl.load(
            h_rows_b[:, None] + offs_d[None, :], mask=used_b[:, None] & in_d[None, :], other=0.0
        )
        if UPCAST:
            w, h_a, h_b = w.to(tl.float32), h_a.to(tl.float32), h_b.to(tl.float32)
        z_a = tl.dot(h_a, tl.trans(w), z_a, input_precision=PRECISION)
        z_b = tl.dot(h_b, tl.trans(w), z_b, input_precision=PRECISION)
    return z_a, z_b


@triton.jit
def _fused_loss_fwd_kernel(
    # pointers
    H_ptr,  # (N, D) hidden states
    W_ptr,  # (V, D) LM head
    Rows_ptr,  # (S,) int64: row of each slot, -1 = empty
    Tgt_ptr,  # (S,) int64: target of each slot, -100 = no CE in this slot
    CW_ptr,  # (S,) fp32: CE weight of each slot (0 where no CE)
    KW_ptr,  # (S / 2,) fp32: KL weight of each pair (0 in solo blocks)
    Lse_ptr,  # (S,) fp32 out: log-sum-exp of each slot's logits
    CE_ptr,  # (S,) fp32 out: c * CE of each slot
    KL_ptr,  # (S / 2,) fp32 out: k * KL of each pair
    # shapes
    V,  # vocabulary size
    D,  # hidden size
    # strides
    H_stride,  # row stride of hidden
    W_stride,  # row stride of weight
    # constants
    BLOCK_H: tl.constexpr,  # slots per half block
    BLOCK_V: tl.constexpr,  # vocabulary tile
    BLOCK_D: tl.constexpr,  # reduction tile
    HAS_KL: tl.constexpr,  # any pair in the launch
    PRECISION: tl.constexpr,  # tl.dot input precision ("ieee" for fp32 inputs)
    UPCAST: tl.constexpr,  # interpreter only: its tl.dot multiplies bf16 bit patterns
):
    blk = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    slot_a = blk * 2 * BLOCK_H + offs_h  # teachers (or solo rows)
    slot_b = slot_a + BLOCK_H  # students (or solo rows)
    rows_a = tl.load(Rows_ptr + slot_a)
    rows_b = tl.load(Rows_ptr + slot_b)
    if (tl.max(rows_a, axis=0) < 0) & (tl.max(rows_b, axis=0) < 0):
        return  # an empty solo block past the last loss row
    used_a = rows_a >= 0
    used_b = rows_b >= 0
    tgt_a = tl.load(Tgt_ptr + slot_a)
    tgt_b = tl.load(Tgt_ptr + slot_b)
    h_rows_a = H_ptr + rows_a * H_stride
    h_rows_b = H_ptr + rows_b * H_stride

    m_a = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    m_b = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    s_a = tl.zeros((BLOCK_H,), tl.float32)
    s_b = tl.zeros((BLOCK_H,), tl.float32)
    zy_a = tl.zeros((BLOCK_H,), tl.float32)
    zy_b = tl.zeros((BLOCK_H,), tl.float32)
    c_ab = tl.zeros((BLOCK_H,), tl.float32)  # sum exp(z_a - m_a) (z_a - z_b)
    for v0 in range(0, V, BLOCK_V):
        # int32 column offsets inside the tile, one int64 base per tile: fewer registers
        cols = tl.arange(0, BLOCK_V)
        in_v = cols < V - v0
        w_tile = W_ptr + tl.cast(v0, tl.int64) * W_stride
        z_a, z_b = _logit_tiles(
            w_tile, W_stride, cols, in_v, h_rows_a, used_a, h_rows_b, used_b, D,
            BLOCK_H, BLOCK_V, BLOCK_D, PRECISION, UPCAST,
        )  # fmt: skip
        zy_a += tl.sum(tl.where(cols[None, :] == (tgt_a - v0)[:, None], z_a, 0.0), axis=1)
        zy_b += tl.sum(tl.where(cols[None, :] == (tgt_b - v0)[:, None], z_b, 0.0), axis=1)
        # online log-sum-exp: rescale the running sums when the running maximum grows
        m_a_new = tl.maximum(m_a, tl.max(tl.where(in_v[None, :], z_a, float("-inf")), axis=1))
        m_b_new = tl.maximum(m_b, tl.max(tl.where(in_v[None, :], z_b, float("-inf")), axis=1))
        e_a = tl.where(in_v[None, :], tl.exp(z_a - m_a_new[:, None]), 0.0)
        e_b = tl.where(in_v[None, :], tl.exp(z_b - m_b_new[:, None]), 0.0)
        scale_a = tl.exp(m_a - m_a_new)
        s_a = s_a * scale_a + tl.sum(e_a, axis=1)
        s_b = s_b * tl.exp(m_b - m_b_new) + tl.sum(e_b, axis=1)
        if HAS_KL:
            c_ab = c_ab * scale_a + tl.sum(e_a * (z_a - z_b), axis=1)
        m_a = m_a_new
        m_b = m_b_new
    lse_a = m_a + tl.log(s_a)
    lse_b = m_b + tl.log(s_b)
    tl.store(Lse_ptr + slot_a, lse_a)
    tl.store(Lse_ptr + slot_b, lse_b)
    cw_a = tl.load(CW_ptr + slot_a)
    cw_b = tl.load(CW_ptr + slot_b)
    tl.store(CE_ptr + slot_a, tl.where(cw_a != 0, cw_a * (lse_a - zy_a), 0.0))
    tl.store(CE_ptr + slot_b, tl.where(cw_b != 0, cw_b * (lse_b - zy_b), 0.0))
    if HAS_KL:
        kw = tl.load(KW_ptr + blk * BLOCK_H + offs_h)
        kl = c_ab / s_a - lse_a + lse_b
        tl.store(KL_ptr + blk * BLOCK_H + offs_h, tl.where(kw != 0, kw * kl, 0.0))


@triton.jit
def _fused_loss_bwd_kernel(
    # pointers
    H_ptr,  # (N, D) hidden states
    W_ptr,  # (V, D) LM head
    Rows_ptr,  # (S,) int64: row of each slot, -1 = empty
    Tgt_ptr,  # (S,) int64: target of each slot, -100 = no CE in this slot
    CW_ptr,  # (S,) fp32: CE weight of each slot
    KW_ptr,  # (S / 2,) fp32: KL weight of each pair
    Lse_ptr,  # (S,) fp32: log-sum-exp from the forward
    G_ptr,  # () fp32: upstream gradient of the loss (read on the device: no host sync)
    DH_ptr,  # (N, D) fp32 out, accumulated atomically
    DW_ptr,  # (V, D) fp32 out, accumulated atomically
    # shapes
    V,  # vocabulary size
    D,  # hidden size
    NUM_BLOCKS,  # row blocks in the launch
    # strides
    H_stride,  # row stride of hidden
    W_stride,  # row stride of weight
    DH_stride,  # row stride of DH
    DW_stride,  # row stride of DW
    # constants
    BLOCK_H: tl.constexpr,  # slots per half block
    BLOCK_V: tl.constexpr,  # vocabulary tile
    BLOCK_D: tl.constexpr,  # reduction / output tile over D
    COMPUTE_DH: tl.constexpr,  # hidden requires grad
    COMPUTE_DW: tl.constexpr,  # weight requires grad
    PRECISION: tl.constexpr,  # tl.dot input precision
    UPCAST: tl.constexpr,  # interpreter only: its tl.dot multiplies bf16 bit patterns
):
    pid = tl.program_id(0).to(tl.int64)
    blk = pid % NUM_BLOCKS  # row blocks vary fastest: neighbours share the W tile in L2
    v_tile = pid // NUM_BLOCKS
    offs_h = tl.arange(0, BLOCK_H)
    slot_a = blk * 2 * BLOCK_H + offs_h
    slot_b = slot_a + BLOCK_H
    rows_a = tl.load(Rows_ptr + slot_a)
    rows_b = tl.load(Rows_ptr + slot_b)
    if (tl.max(rows_a, axis=0) < 0) & (tl.max(rows_b, axis=0) < 0):
        return
    used_a = rows_a >= 0
    used_b = rows_b >= 0
    h_rows_a = H_ptr + rows_a * H_stride
    h_rows_b = H_ptr + rows_b * H_stride
    v0 = v_tile * BLOCK_V
    cols = tl.arange(0, BLOCK_V)
    in_v = cols < V - v0
    w_tile = W_ptr + v0 * W_stride

    z_a, z_b = _logit_tiles(
        w_tile, W_stride, cols, in_v, h_rows_a, used_a, h_rows_b, used_b, D,
        BLOCK_H, BLOCK_V, BLOCK_D, PRECISION, UPCAST,
    )  # fmt: skip

    g = tl.load(G_ptr)
    lse_a = tl.load(Lse_ptr + slot_a)
    lse_b = tl.load(Lse_ptr + slot_b)
    p_a = tl.where(in_v[None, :], tl.exp(z_a - lse_a[:, None]), 0.0)
    p_b = tl.where(in_v[None, :], tl.exp(z_b - lse_b[:, None]), 0.0)
    tgt_a = tl.load(Tgt_ptr + slot_a)
    tgt_b = tl.load(Tgt_ptr + slot_b)
    cw_a = tl.load(CW_ptr + slot_a) * g
    cw_b = tl.load(CW_ptr + slot_b) * g
    kw = tl.load(KW_ptr + blk * BLOCK_H + offs_h) * g
    # dz = c (p - onehot(y)); students also k (p_s - p_t); teachers get nothing from the KL
    dz_a = cw_a[:, None] * (p_a - tl.where(cols[None, :] == (tgt_a - v0)[:, None], 1.0, 0.0))
    dz_b = cw_b[:, None] * (p_b - tl.where(cols[None, :] == (tgt_b - v0)[:, None], 1.0, 0.0))
    dz_b += kw[:, None] * (p_b - p_a)
    dz_a = dz_a.to(W_ptr.dtype.element_ty)  # tensor-core operands in the input dtype
    dz_b = dz_b.to(W_ptr.dtype.element_ty)
    if UPCAST:
        dz_a, dz_b = dz_a.to(tl.float32), dz_b.to(tl.float32)

    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        in_d = offs_d < D
        if COMPUTE_DH:
            w = tl.load(
                w_tile + cols[:, None] * W_stride + offs_d[None, :],
                mask=in_v[:, None] & in_d[None, :],
                other=0.0,
            )
            if UPCAST:
                w = w.to(tl.float32)
            dh_a = tl.dot(dz_a, w, input_precision=PRECISION)
            dh_b = tl.dot(dz_b, w, input_precision=PRECISION)
            tl.atomic_add(
                DH_ptr + rows_a[:, None] * DH_stride + offs_d[None, :],
                dh_a,
                mask=used_a[:, None] & in_d[None, :],
            )
            tl.atomic_add(
                DH_ptr + rows_b[:, None] * DH_stride + offs_d[None, :],
                dh_b,
                mask=used_b[:, None] & in_d[None, :],
            )
        if COMPUTE_DW:
            h_a = tl.load(
                h_rows_a[:, None] + offs_d[None, :], mask=used_a[:, None] & in_d[None, :], other=0.0
            )
            h_b = tl.load(
                h_rows_b[:, None] + offs_d[None, :], mask=used_b[:, None] & in_d[None, :], other=0.0
            )
            if UPCAST:
                h_a, h_b = h_a.to(tl.float32), h_b.to(tl.float32)
            dw = tl.dot(tl.trans(dz_a), h_a, input_precision=PRECISION)
            dw = tl.dot(tl.trans(dz_b), h_b, dw, input_precision=PRECISION)
            tl.atomic_add(
                DW_ptr + v0 * DW_stride + cols[:, None] * DW_stride + offs_d[None, :],
                dw,
                mask=in_v[:, None] & in_d[None, :],
            )


_PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


def _compile_specs() -> list[dict]:
    """Production launches of both kernels per dtype, for bench/compile_check.py."""
    specs = []
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        io = {"H_ptr": _PTR[dtype], "W_ptr": _PTR[dtype], "Rows_ptr": "*i64", "Tgt_ptr": "*i64"}
        io |= {"CW_ptr": "*fp32", "KW_ptr": "*fp32", "Lse_ptr": "*fp32"}
        fwd, bwd = FWD_BLOCKS[dtype], BWD_BLOCKS[dtype]
        tiles = lambda b: {"BLOCK_H": b.block_h, "BLOCK_V": b.block_v, "BLOCK_D": b.block_d}
        specs.append(
            {
                "name": f"fused_loss_fwd/{name}",
                "kernel": _fused_loss_fwd_kernel,
                "signature": io
                | {"CE_ptr": "*fp32", "KL_ptr": "*fp32", "V": "i32", "D": "i32"}
                | {"H_stride": "i64", "W_stride": "i64"}
                | dict.fromkeys(
                    ["BLOCK_H", "BLOCK_V", "BLOCK_D", "HAS_KL", "PRECISION", "UPCAST"], "constexpr"
                ),
                "constexprs": tiles(fwd)
                | {"HAS_KL": True, "PRECISION": PRECISION[dtype], "UPCAST": False},
                "num_warps": fwd.num_warps,
                "num_stages": fwd.num_stages,
            }
        )
        specs.append(
            {
                "name": f"fused_loss_bwd/{name}",
                "kernel": _fused_loss_bwd_kernel,
                "signature": io
                | {"G_ptr": "*fp32", "DH_ptr": "*fp32", "DW_ptr": "*fp32"}
                | {"V": "i32", "D": "i32", "NUM_BLOCKS": "i32"}
                | dict.fromkeys(["H_stride", "W_stride", "DH_stride", "DW_stride"], "i64")
                | dict.fromkeys(
                    [
                        "BLOCK_H",
                        "BLOCK_V",
                        "BLOCK_D",
                        "COMPUTE_DH",
                        "COMPUTE_DW",
                        "PRECISION",
                        "UPCAST",
                    ],
                    "constexpr",
                ),
                "constexprs": tiles(bwd)
                | {
                    "COMPUTE_DH": True,
                    "COMPUTE_DW": True,
                    "PRECISION": PRECISION[dtype],
                    "UPCAST": False,
                },
                "num_warps": bwd.num_warps,
                "num_stages": bwd.num_stages,
            }
        )
    return specs


COMPILE_SPECS = _compile_specs()


@dataclass
class _Slots:
    rows: torch.Tensor  # (S,) int64, -1 = empty
    targets: torch.Tensor  # (S,) int64
    ce_weight: torch.Tensor  # (S,) fp32
    kl_weight: torch.Tensor  # (S / 2,) fp32
    num_blocks: int


def build_slots(
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    block_h: int,
) -> _Slots:
    """Lay the loss rows out in blocks of 2 * block_h slots (module docstring), on the device,
    with shapes known on the host: no sync."""
    n = targets.shape[0]
    p = kl_pairs.shape[0]
    dev = targets.device
    n_pair_blocks = triton.cdiv(p, block_h)
    n_solo_blocks = triton.cdiv(n, 2 * block_h)
    nb = n_pair_blocks + n_solo_blocks
    rows = torch.full((nb, 2, block_h), -1, dtype=torch.int64, device=dev)
    slot_id = torch.full((nb, 2, block_h), 2 * p, dtype=torch.int64, device=dev)
    kw = torch.zeros(nb * block_h, dtype=torch.float32, device=dev)
    owner = pair_slot_owner(kl_pairs, n)
    if p > 0:
        padded = n_pair_blocks * block_h
        pairs = torch.full((2, padded), -1, dtype=torch.int64, device=dev)
        pairs[:, :p] = kl_pairs.T
        rows[:n_pair_blocks] = pairs.view(2, n_pair_blocks, block_h).transpose(0, 1)
        ids = 2 * torch.arange(padded, device=dev).view(n_pair_blocks, block_h)
        slot_id[:n_pair_blocks, 0] = ids
        slot_id[:n_pair_blocks, 1] = ids + 1
        kw[:p] = kl_weight
    # Rows with CE and no pair first (stable sort on a flag), the rest marked empty.
    solo = (targets != IGNORE_INDEX) & (ce_weight != 0) & (owner == 2 * p)
    order = torch.argsort((~solo).to(torch.int8), stable=True)
    order = torch.where(torch.arange(n, device=dev) < solo.sum(), order, -1)
    rows[n_pair_blocks:].view(-1)[:n] = order
    flat = rows.view(-1)
    r = flat.clamp(min=0)
    mine = (flat >= 0) & (owner[r] == slot_id.view(-1)) & (targets[r] != IGNORE_INDEX)
    return _Slots(
        rows=flat,
        targets=torch.where(mine, targets[r], IGNORE_INDEX),
        ce_weight=torch.where(mine, ce_weight[r], 0.0),
        kl_weight=kw,
        num_blocks=nb,
    )


def _loss_fwd(
    hidden: torch.Tensor, weight: torch.Tensor, slots: _Slots, has_kl: bool, blocks: LossBlocks
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lse (S,), ce sum, kl sum)."""
    s = slots.rows.shape[0]
    dev = hidden.device
    lse = torch.zeros(s, dtype=torch.float32, device=dev)
    ce = torch.zeros(s, dtype=torch.float32, device=dev)
    kl = torch.zeros(s // 2, dtype=torch.float32, device=dev)
    if slots.num_blocks > 0:
        _fused_loss_fwd_kernel[(slots.num_blocks,)](
            hidden,
            weight,
            slots.rows,
            slots.targets,
            slots.ce_weight,
            slots.kl_weight,
            lse,
            ce,
            kl,
            weight.shape[0],
            hidden.shape[1],
            hidden.stride(0),
            weight.stride(0),
            BLOCK_H=blocks.block_h,
            BLOCK_V=blocks.block_v,
            BLOCK_D=blocks.block_d,
            HAS_KL=has_kl,
            PRECISION=PRECISION[hidden.dtype],
            UPCAST=hidden.dtype != torch.float32 and triton_interpreted(),
            num_warps=blocks.num_warps,
            num_stages=blocks.num_stages,
        )
    return lse, ce.sum(), kl.sum()


def _loss_bwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    slots: _Slots,
    lse: torch.Tensor,
    grad_loss: torch.Tensor,
    need_dh: bool,
    need_dw: bool,
    blocks: LossBlocks,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """fp32 (dh (N, D) or None, dW (V, D) or None) for upstream gradient ``grad_loss`` (0-dim)."""
    dev = hidden.device
    dh = torch.zeros(hidden.shape, dtype=torch.float32, device=dev) if need_dh else None
    dw = torch.zeros(weight.shape, dtype=torch.float32, device=dev) if need_dw else None
    v = weight.shape[0]
    if slots.num_blocks > 0 and (need_dh or need_dw):
        dummy = torch.empty((1, 1), dtype=torch.float32, device=dev)
        dh_t = dh if dh is not None else dummy
        dw_t = dw if dw is not None else dummy
        grid = (slots.num_blocks * triton.cdiv(v, blocks.block_v),)
        _fused_loss_bwd_kernel[grid](
            hidden,
            weight,
            slots.rows,
            slots.targets,
            slots.ce_weight,
            slots.kl_weight,
            lse,
            grad_loss.to(torch.float32).reshape(()),
            dh_t,
            dw_t,
            v,
            hidden.shape[1],
            slots.num_blocks,
            hidden.stride(0),
            weight.stride(0),
            dh_t.stride(0),
            dw_t.stride(0),
            BLOCK_H=blocks.block_h,
            BLOCK_V=blocks.block_v,
            BLOCK_D=blocks.block_d,
            COMPUTE_DH=need_dh,
            COMPUTE_DW=need_dw,
            PRECISION=PRECISION[hidden.dtype],
            UPCAST=hidden.dtype != torch.float32 and triton_interpreted(),
            num_warps=blocks.num_warps,
            num_stages=blocks.num_stages,
        )
    return dh, dw


class TritonFusedReflectionLoss(torch.autograd.Function):
    """Forward: one pass with online statistics; backward: recompute tile by tile."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ce_weight, kl_pairs, kl_weight, fwd, bwd):
        hidden = hidden.contiguous()
        weight = weight.contiguous()
        if bwd.block_h != fwd.block_h:  # lse is stored per slot of the forward's layout
            raise ValueError("bwd_blocks: block_h must equal the forward's")
        slots = build_slots(targets, ce_weight, kl_pairs, kl_weight, fwd.block_h)
        lse, ce, kl = _loss_fwd(hidden, weight, slots, kl_pairs.shape[0] > 0, fwd)
        ctx.save_for_backward(hidden, weight, lse)
        ctx.slots = slots
        ctx.bwd = bwd
        ctx.mark_non_differentiable(ce, kl)
        return ce + kl, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        hidden, weight, lse = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh, dw = _loss_bwd(hidden, weight, ctx.slots, lse, grad_loss, need_dh, need_dw, ctx.bwd)
        return (
            dh.to(hidden.dtype) if dh is not None else None,
            dw.to(weight.dtype) if dw is not None else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def triton_linear_reflection_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    fwd_blocks: LossBlocks | None = None,
    bwd_blocks: LossBlocks | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Triton backend (inputs already checked); block overrides are for tests."""
    fwd = fwd_blocks or FWD_BLOCKS[hidden.dtype]
    bwd = bwd_blocks or BWD_BLOCKS[hidden.dtype]
    loss, ce, kl = TritonFusedReflectionLoss.apply(
        hidden, weight, targets, ce_weight, kl_pairs, kl_weight, fwd, bwd
    )
    return loss, {"ce": ce, "kl": kl}


def triton_interpreted() -> bool:
    """True when the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_fused_loss_fwd_kernel, triton.runtime.JITFunction)


def fused_linear_reflection_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    backend: str = "auto",
    check_inputs: bool | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted CE + KL of packed rows straight from hidden states; no (N, V) tensor is built.

    hidden: (N, D) float, the final hidden states of the loss rows; weight: (V, D) LM head, same
    dtype; targets: (N,) int64 next-token ids, -100 = no CE; ce_weight: (N,) fp32;
    kl_pairs: (P, 2) int64 (teacher_row, student_row) into the N rows; kl_weight: (P,) fp32.
    Returns loss = sum_i ce_weight_i CE_i + sum_j kl_weight_j KL(p_t || p_s) (0-dim fp32) and
    {"ce", "kl"}, its two detached parts. The teacher of a pair gets no gradient from its KL.
    backend: "triton" (CUDA; the CPU interpreter in tests), "torch" (chunked PyTorch), or "auto"
    (Triton on CUDA, PyTorch elsewhere). check_inputs: check target and pair indices (default:
    on CPU; off on CUDA, where it costs a host sync).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    on_cuda = hidden.device.type == "cuda"
    check_loss_inputs(
        hidden,
        weight,
        targets,
        ce_weight,
        kl_pairs,
        kl_weight,
        check_indices=(not on_cuda) if check_inputs is None else check_inputs,
    )
    if backend == "auto":
        backend = "triton" if on_cuda else "torch"
    if backend == "triton":
        if not on_cuda and not triton_interpreted():
            raise ValueError("backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1)")
        return triton_linear_reflection_loss(
            hidden, weight, targets, ce_weight, kl_pairs, kl_weight
        )
    return torch_linear_reflection_loss(hidden, weight, targets, ce_weight, kl_pairs, kl_weight)
