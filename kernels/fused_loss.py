"""Fused linear reflection loss: teacher CE + student CE + KL straight from hidden states.

Maths (docs/kernel-math.md). Rows r: h_r (D), z_r = W h_r (V), p_r = softmax(z_r).
  loss = sum_r c_r (lse_r - z_r[y_r]) + sum_j k_j (E_pt[z_t - z_s] - lse_t + lse_s),  j = (t, s)
  d loss / d z_r = g (c_r (p_r - onehot(y_r)) + sum_{j: s_j = r} k_j (p_r - p_t(j)))
  d h_r = sum_v dz_rv W_v,  d W_v = sum_r dz_rv h_r.   (The teacher is detached from the KL.)

GPU schedule (fused_loss_schedule.py has the layout): chunks of slots that keep each teacher and
student together, each run as two halves; per half a cuBLAS GEMM to (R / 2, V) logits in the
input dtype, ONE Triton row kernel (below) on a side stream that reads each logit row once for
lse, CE and KL and once more to write d z in place (beside the other half's GEMM), and d h =
d z W; per chunk d W += d z^T h; cuBLAS GEMMs with fp32 accumulation. No
atomics: per-slot d h rows are summed per row by a second small kernel in a fixed order, so the
gradients are bitwise reproducible. 6 R D V FLOPs, all on tensor cores in cuBLAS; the row
kernel is memory-bound (3 passes over 2 R V bytes). bench/roofline.py models time and memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .fused_loss_schedule import (
    IGNORE_INDEX,
    ChunkBudget,
    LossPlan,
    accum_dtype,
    build_plan,
    check_loss_inputs,
    default_budget,
    run_chunks,
    torch_row_op,
    torch_sum_slots,
)
from .fused_loss_stats import GemmTiles, stats_loss

BACKENDS = ("auto", "triton", "torch")
# How the loss alone is computed: "gemm_rows" (the logits GEMM into the chunk's buffer, then one
# read by the row kernel; the default: bench/roofline.py models it faster at the GEMM rates
# published for cuBLAS and Triton) or "stats_epilogue" (Triton only: fused_loss_stats.py, the
# statistics in the GEMM's epilogue; no logits buffer, a few MiB of workspace instead).
LOSS_ONLY_SCHEDULES = ("gemm_rows", "stats_epilogue")


@dataclass(frozen=True)
class RowTiles:
    """Tile sizes of the two Triton kernels. Production values below; tests pass small ones."""

    block_v: int = 2048  # logits per row-kernel iteration: 8 fp32 per thread per row at 8 warps
    block_d: int = 1024  # columns of d h per slot-sum program
    num_warps: int = 8


TILES = RowTiles()


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
    PAIRS: tl.constexpr,  # program i takes teacher slot i and student slot HALF + i
    WRITE_DZ: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One program per pair (or per CE-only row): pass 1 online (m, S) per row, the target
    logit and, per pair, C = sum exp(z_t - m_t) (z_t - z_s); pass 2 writes d z over z."""
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
        m_a_new = tl.maximum(m_a, tl.max(tl.where(in_v, za, float("-inf")), axis=0))
        e_a = tl.where(in_v, tl.exp(za - m_a_new), 0.0)
        scale_a = tl.exp(m_a - m_a_new)
        s_a = s_a * scale_a + tl.sum(e_a, axis=0)
        zy_a += tl.sum(tl.where(cols == tgt_a - v0, za, 0.0), axis=0)
        if PAIRS:
            zb = tl.load(zb_row + v0 + cols, mask=in_v, other=0.0).to(tl.float32)
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
            p_a = tl.exp(za - lse_a)
            dz_a = cw_a * (p_a - tl.where(cols == tgt_a - v0, 1.0, 0.0))
            if PAIRS:
                zb = tl.load(zb_row + v0 + cols, mask=in_v, other=0.0).to(tl.float32)
                p_b = tl.exp(zb - lse_b)
                # students: c (p_s - onehot) + k (p_s - p_t); teachers get nothing from the KL
                dz_b = cw_b * (p_b - tl.where(cols == tgt_b - v0, 1.0, 0.0)) + kw * (p_b - p_a)
                tl.store(zb_row + v0 + cols, dz_b.to(Z_ptr.dtype.element_ty), mask=in_v)
            tl.store(za_row + v0 + cols, dz_a.to(Z_ptr.dtype.element_ty), mask=in_v)


@triton.jit
def _sum_slots_kernel(
    DHS_ptr,  # (S, D) d h of each slot, input dtype
    Order_ptr,  # (S,) int64: slots sorted by row (stable: a fixed order)
    Start_ptr,  # (N + 1,) int64: row n's slots are Order[Start[n]:Start[n + 1]]
    G_ptr,  # () fp32: upstream gradient (read on the device: no host sync)
    DH_ptr,  # (N, D) out, input dtype
    D,  # hidden size
    DHS_stride,  # row stride of DHS
    DH_stride,  # row stride of DH
    BLOCK_D: tl.constexpr,
):
    """d h of one row and D tile: its slots summed in fp32 in a fixed order, times g."""
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < D
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for k in range(tl.load(Start_ptr + n), tl.load(Start_ptr + n + 1)):
        slot = tl.load(Order_ptr + k)
        acc += tl.load(DHS_ptr + slot * DHS_stride + cols, mask=in_d, other=0.0).to(tl.float32)
    acc *= tl.load(G_ptr)
    tl.store(DH_ptr + n * DH_stride + cols, acc.to(DH_ptr.dtype.element_ty), mask=in_d)


def triton_row_op(tiles: RowTiles):
    """The row maths as one launch of the Triton row kernel per chunk (a ``RowOp``)."""

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
            PAIRS=pairs,
            WRITE_DZ=write_dz,
            BLOCK_V=tiles.block_v,
            num_warps=tiles.num_warps,
        )

    return row_op


def triton_sum_slots(dh_slots, rows, n, g, tiles: RowTiles):
    """d h (N, D): each row's slots summed in a fixed order (no atomics), times g."""
    d = dh_slots.shape[1]
    order = torch.argsort(rows, stable=True)
    start = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n), 0, out=start[1:])
    dh = torch.empty(n, d, dtype=dh_slots.dtype, device=dh_slots.device)
    if n > 0:
        grid = (n, triton.cdiv(d, tiles.block_d))
        _sum_slots_kernel[grid](
            dh_slots, order, start, g, dh, d, dh_slots.stride(0), dh.stride(0),
            BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
        )  # fmt: skip
    return dh


def _compile_specs() -> list[dict]:
    """Production launches at the headline shape (D = 4096, V = 128256, 1024-slot halves of
    2048-slot chunks) for bench/compile_check.py, with arguments as the launcher passes them
    (dtypes; pointer alignment: half slices start at multiples of 128 slots); the check turns
    them into the runtime's specialisation."""
    d, v, rows = 4096, 128256, 1024
    specs = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        z = torch.empty(16, dtype=dtype)
        i64 = torch.empty(16, dtype=torch.int64)
        f32 = torch.empty(16, dtype=torch.float32)
        for pairs in (True, False):
            args = dict(Z_ptr=z, Tgt_ptr=i64, CW_ptr=f32, KW_ptr=f32, CE_ptr=f32, KL_ptr=f32)
            args |= dict(V=v, Z_stride=v, HALF=rows // 2 if pairs else 0)
            args |= dict(PAIRS=pairs, WRITE_DZ=True, BLOCK_V=TILES.block_v)
            specs.append(
                {
                    "name": f"reflection_rows/{'pairs' if pairs else 'ce_only'}/{name}",
                    "kernel": _reflection_rows_kernel,
                    "args": args,
                    "num_warps": TILES.num_warps,
                }
            )
        args = dict(DHS_ptr=z, Order_ptr=i64, Start_ptr=i64, G_ptr=f32, DH_ptr=z, D=d)
        args |= dict(DHS_stride=d, DH_stride=d, BLOCK_D=TILES.block_d)
        specs.append(
            {
                "name": f"sum_slots/{name}",
                "kernel": _sum_slots_kernel,
                "args": args,
                "num_warps": TILES.num_warps,
            }
        )
    return specs


COMPILE_SPECS = _compile_specs()


def plan_chunks(weight, budget: ChunkBudget, loss_args: tuple, ce_only_rows=None) -> LossPlan:
    """The slot layout for ``weight``'s vocabulary and dtype under ``budget``: half-chunks,
    two of which fill the budget's logits buffer (``run_chunks``). ``loss_args``: (targets,
    ce_weight, kl_pairs, kl_weight)."""
    rows = budget.rows(weight.shape[0], weight.element_size())
    return build_plan(*loss_args, max(2, rows // 2), ce_only_rows)


def row_op_of(backend: str, tiles: RowTiles):
    return triton_row_op(tiles) if backend == "triton" else torch_row_op


def on_device(device: torch.device):
    """Make ``device`` current while the chunks run: Triton launches, and the side stream
    waits, on the current CUDA device, which need not be the tensors' (``cuda:1``)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class FusedReflectionLoss(torch.autograd.Function):
    """Forward runs the chunks (loss, per-slot d h, d W for an upstream gradient of 1);
    backward sums the slots per row and scales both gradients by the upstream gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ce_weight, kl_pairs, kl_weight, run, ce_only_rows):
        backend, grads, budget, tiles = run
        hidden = hidden.contiguous()
        weight = weight.contiguous()
        loss_args = (targets, ce_weight, kl_pairs, kl_weight)
        with on_device(hidden.device):
            plan = plan_chunks(weight, budget, loss_args, ce_only_rows)
            row_op = row_op_of(backend, tiles)
            ce, kl, dh_slots, dw = run_chunks(hidden, weight, plan, row_op, *grads)
        ctx.save_for_backward(dh_slots, dw, plan.rows)
        ctx.meta = (backend, hidden.shape[0], tiles)
        ctx.dw_scale = None  # the upstream gradient d W was multiplied by, once it was
        ctx.mark_non_differentiable(ce, kl)
        return ce + kl, ce, kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        dh_slots, dw, rows = ctx.saved_tensors
        backend, n, tiles = ctx.meta
        dev = grad_loss.device
        g = grad_loss.to(accum_dtype(dw.dtype if dh_slots is None else dh_slots.dtype))
        g = g.reshape(())
        dh = None
        with on_device(dev):
            if dh_slots is not None:
                if backend == "triton":
                    dh = triton_sum_slots(dh_slots, rows, n, g, tiles)
                else:
                    dh = torch_sum_slots(dh_slots, rows, n, g)
            if dw is not None:
                dw = FusedReflectionLoss._scaled_dw(ctx, dw, g)
        return dh, dw, None, None, None, None, None, None

    @staticmethod
    def _scaled_dw(ctx, dw, g):
        """d W times g: in place the first time (the forward's buffer becomes the gradient, no
        copy; exact when g = 1); a later backward of a retained graph (``retain_graph=True``,
        ``torch.autograd.gradcheck``) rescales that product out of place."""
        if ctx.dw_scale is None:
            ctx.dw_scale = g
            # the saved buffer keeps its version: a retained graph may unpack it again
            with torch.autograd._unsafe_preserve_version_counter(dw):
                return dw.mul_(g)
        if bool(ctx.dw_scale == 0):  # a host sync, on a repeated backward only
            raise RuntimeError(
                "fused_linear_reflection_loss: a second backward after one with a zero upstream "
                "gradient (d W was scaled to zero in place)"
            )
        return dw * (g / ctx.dw_scale)


def triton_interpreted() -> bool:
    """True when the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_reflection_rows_kernel, triton.runtime.JITFunction)


def wants_grad(hidden: torch.Tensor, weight: torch.Tensor, need_grad: bool | None):
    """(d hidden wanted, d W wanted): autograd's view unless ``need_grad`` says otherwise."""
    if need_grad is False or not torch.is_grad_enabled():
        return False, False
    return hidden.requires_grad, weight.requires_grad


def loss_only(
    hidden: torch.Tensor, weight: torch.Tensor, loss_args: tuple, run: tuple, ce_only_rows=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The forward alone: no d z, no d h / d W GEMMs, no gradient buffers. ``loss_args``:
    (targets, ce_weight, kl_pairs, kl_weight); ``run``: (backend, budget, tiles, schedule,
    gemm_tiles). "gemm_rows": per chunk the logits GEMM and one read of them by the row maths,
    memory one chunk's logits and h; "stats_epilogue": per chunk one statistics GEMM, memory
    one chunk's h and its tile statistics (``LOSS_ONLY_SCHEDULES``)."""
    backend, budget, tiles, schedule, gemm_tiles = run
    hidden = hidden.detach().contiguous()
    weight = weight.detach().contiguous()
    with on_device(hidden.device):
        plan = plan_chunks(weight, budget, loss_args, ce_only_rows)
        if schedule == "stats_epilogue":
            ce, kl = stats_loss(hidden, weight, plan, gemm_tiles)
        else:
            row_op = row_op_of(backend, tiles)
            ce, kl, _, _ = run_chunks(hidden, weight, plan, row_op, False, False)
    return ce + kl, {"ce": ce, "kl": kl}


def linear_reflection_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    backend: str,
    budget: ChunkBudget | None = None,
    tiles: RowTiles = TILES,
    ce_only_rows: torch.Tensor | None = None,
    need_grad: bool | None = None,
    loss_only_schedule: str = "gemm_rows",
    gemm_tiles: GemmTiles | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One backend on checked inputs; ``budget`` / ``tiles`` / ``gemm_tiles`` overrides are for
    tests; ``loss_only_schedule`` applies when no gradient is wanted (``LOSS_ONLY_SCHEDULES``)."""
    if loss_only_schedule not in LOSS_ONLY_SCHEDULES:
        raise ValueError(
            f"loss_only_schedule: expected one of {LOSS_ONLY_SCHEDULES}, got {loss_only_schedule!r}"
        )
    if loss_only_schedule == "stats_epilogue" and backend != "triton":
        raise ValueError(
            f"loss_only_schedule: 'stats_epilogue' needs backend 'triton', not {backend!r}"
        )
    budget = budget or default_budget(hidden.device)
    grads = wants_grad(hidden, weight, need_grad)
    if not any(grads):
        loss_args = (targets, ce_weight, kl_pairs, kl_weight)
        run = (backend, budget, tiles, loss_only_schedule, gemm_tiles)
        return loss_only(hidden, weight, loss_args, run, ce_only_rows)
    run = (backend, grads, budget, tiles)
    loss, ce, kl = FusedReflectionLoss.apply(
        hidden, weight, targets, ce_weight, kl_pairs, kl_weight, run, ce_only_rows
    )
    return loss, {"ce": ce, "kl": kl}


def fused_linear_reflection_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    backend: str = "auto",
    check_inputs: bool | None = None,
    ce_only_rows: torch.Tensor | None = None,
    need_grad: bool | None = None,
    loss_only_schedule: str = "gemm_rows",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted CE + KL of packed rows straight from hidden states; no (N, V) tensor is built.

    hidden: (N, D) float, the final hidden states of the loss rows; weight: (V, D) LM head, same
    dtype; targets: (N,) int64 next-token ids, -100 = no CE; ce_weight: (N,) fp32;
    kl_pairs: (P, 2) int64 (teacher_row, student_row) into the N rows; kl_weight: (P,) fp32.
    Returns loss = sum_i ce_weight_i CE_i + sum_j kl_weight_j KL(p_t || p_s) (0-dim fp32; fp64
    for fp64 inputs) and {"ce", "kl"}, its two detached parts. The teacher of a pair gets no
    gradient from its KL; the weights are constants (no gradient flows into them).
    backend: "triton" (CUDA: cuBLAS GEMMs + the Triton row kernel; the CPU interpreter in tests; not
    fp64), "torch" (the same chunks with PyTorch row maths), or "auto" (Triton on CUDA, PyTorch
    elsewhere and for fp64). check_inputs: check target and pair indices (default: on CPU; off on
    CUDA, where it costs a host sync). ce_only_rows: (M,) int64, ascending, the rows with a CE term
    (target given, weight non-zero) in no KL pair, when the caller knows them (``PackedBatch``
    does): rows with a zero weight may be among them, paired rows may not; without it the count is
    read from the device (one host sync on CUDA). need_grad: None (default) follows autograd (grad
    mode on and ``hidden`` or ``weight`` requiring grad); False computes the loss alone (validation,
    logging): no d z, no gradient GEMMs or buffers, and a loss without a graph. loss_only_schedule:
    how that loss alone is computed (``LOSS_ONLY_SCHEDULES``): "gemm_rows" (default) or
    "stats_epilogue" (backend "triton": the statistics in a Triton GEMM's epilogue, no logits
    buffer: tens of MiB of workspace instead of about 0.5 GiB).
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
        ce_only_rows=ce_only_rows,
    )
    wide = hidden.dtype == torch.float64
    if backend == "auto":
        backend = "triton" if on_cuda and not wide else "torch"
    if backend == "triton" and wide:
        raise ValueError("backend: 'triton' takes fp32 / bf16 / fp16; fp64 runs on 'torch'")
    if backend == "triton" and not on_cuda and not triton_interpreted():
        raise ValueError("backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1)")
    # The weights are constants of the loss (SPEC §2's normalisation): no gradient flows to them.
    args = (hidden, weight, targets, ce_weight.detach(), kl_pairs, kl_weight.detach())
    return linear_reflection_loss(
        *args, backend, ce_only_rows=ce_only_rows, need_grad=need_grad,
        loss_only_schedule=loss_only_schedule,
    )  # fmt: skip


__all__ = ["IGNORE_INDEX", "LossPlan", "fused_linear_reflection_loss"]
