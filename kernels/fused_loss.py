"""Fused linear reflection loss: teacher CE + student CE + KL straight from hidden states.

Maths (docs/kernel-math.md). Rows r: h_r (D), z_r = W h_r (V), p_r = softmax(z_r).
  loss = sum_r c_r (lse_r - z_r[y_r]) + sum_j k_j (E_pt[z_t - z_s] - lse_t + lse_s),  j = (t, s)
  d loss / d z_r = g (c_r (p_r - onehot(y_r)) + sum_{j: s_j = r} k_j (p_r - p_t(j)))
  d h_r = sum_v dz_rv W_v,  d W_v = sum_r dz_rv h_r.   (The teacher is detached from the KL.)

GPU schedule (fused_loss_schedule.py has the layout): chunks of slots that keep each teacher and
student together, each run as two halves; per half a cuBLAS GEMM to (R / 2, V) logits in the
input dtype, ONE Triton row kernel (fused_loss_rows.py) on a side stream that reads each logit
row once for lse, CE and KL and once more to write d z in place (beside the other half's GEMM),
and d h = d z W; per chunk d W += d z^T h; cuBLAS GEMMs with fp32 accumulation. No atomics:
per-slot d h rows are summed per row by a second small kernel in a fixed order
(fused_loss_slot_sums.py), so the gradients are bitwise reproducible. 6 R D V FLOPs, all on
tensor cores in cuBLAS; the row kernel is memory-bound (3 passes over 2 R V bytes).
bench/roofline.py models time and memory.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch.autograd.function import once_differentiable

from .fused_loss_rows import TILES, RowTiles, row_kernel_specs, triton_interpreted, triton_row_op
from .fused_loss_schedule import (
    IGNORE_INDEX,
    ChunkBudget,
    LossPlan,
    accum_dtype,
    build_plan,
    check_loss_inputs,
    default_budget,
    run_chunks,
)
from .fused_loss_slot_sums import slot_sum_spec, triton_sum_slots
from .fused_loss_stats import GemmTiles, stats_loss
from .fused_loss_torch_rows import torch_row_op, torch_sum_slots

BACKENDS = ("auto", "triton", "torch")
# How the loss alone is computed: "gemm_rows" (the logits GEMM into the chunk's buffer, then one
# read by the row kernel; the default: bench/roofline.py models it faster at the GEMM rates
# published for cuBLAS and Triton) or "stats_epilogue" (Triton only: fused_loss_stats.py, the
# statistics in the GEMM's epilogue; no logits buffer, a few MiB of workspace instead).
LOSS_ONLY_SCHEDULES = ("gemm_rows", "stats_epilogue")


def _compile_specs() -> list[dict]:
    """Production launches at the headline shape (D = 4096, V = 128256, 1024-slot halves of
    2048-slot chunks) for bench/compile_check.py, with arguments as the launcher passes them
    (dtypes; pointer alignment: half slices start at multiples of 128 slots); the check turns
    them into the runtime's specialisation."""
    d, v, rows = 4096, 128256, 1024
    specs = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        specs += [*row_kernel_specs(name, dtype, v, rows), slot_sum_spec(name, dtype, d)]
    return specs


COMPILE_SPECS = _compile_specs()


def plan_chunks(weight, budget: ChunkBudget, loss_args: tuple, ce_only_rows=None) -> LossPlan:
    """The slot layout for ``weight``'s vocabulary and dtype under ``budget``: half-chunks,
    two of which fill the budget's logits buffer (``run_chunks``). ``loss_args``: (targets,
    ce_weight, kl_pairs, kl_weight)."""
    rows = budget.rows(weight.shape[0], weight.element_size())
    return build_plan(*loss_args, max(2, rows // 2), ce_only_rows)


def row_op_of(backend: str, tiles: RowTiles, softcap: float | None = None):
    """The backend's row maths; ``softcap``: the logits are c tanh(z / c) (None: z, and the
    kernels without it)."""
    if backend == "triton":
        return triton_row_op(tiles, softcap)
    return torch_row_op if softcap is None else functools.partial(torch_row_op, softcap=softcap)


def on_device(device: torch.device):
    """Make ``device`` current while the chunks run: Triton launches, and the side stream
    waits, on the current CUDA device, which need not be the tensors' (``cuda:1``)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class FusedReflectionLoss(torch.autograd.Function):
    """Forward runs the chunks (loss, per-slot d h, d W for an upstream gradient of 1);
    backward sums the slots per row and scales both gradients by the upstream gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ce_weight, kl_pairs, kl_weight, run, ce_only_rows):
        backend, grads, budget, tiles, softcap = run
        hidden = hidden.contiguous()
        weight = weight.contiguous()
        loss_args = (targets, ce_weight, kl_pairs, kl_weight)
        with on_device(hidden.device):
            plan = plan_chunks(weight, budget, loss_args, ce_only_rows)
            row_op = row_op_of(backend, tiles, softcap)
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
    gemm_tiles, softcap). "gemm_rows": per chunk the logits GEMM and one read of them by the
    row maths, memory one chunk's logits and h; "stats_epilogue": per chunk one statistics
    GEMM, memory one chunk's h and its tile statistics (``LOSS_ONLY_SCHEDULES``)."""
    backend, budget, tiles, schedule, gemm_tiles, softcap = run
    hidden = hidden.detach().contiguous()
    weight = weight.detach().contiguous()
    with on_device(hidden.device):
        plan = plan_chunks(weight, budget, loss_args, ce_only_rows)
        if schedule == "stats_epilogue":
            ce, kl = stats_loss(hidden, weight, plan, gemm_tiles, softcap)
        else:
            row_op = row_op_of(backend, tiles, softcap)
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
    softcap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One backend on checked inputs; ``budget`` / ``tiles`` / ``gemm_tiles`` overrides are for
    tests; ``loss_only_schedule`` applies when no gradient is wanted (``LOSS_ONLY_SCHEDULES``);
    ``softcap``: the logits' soft cap (``check_softcap``)."""
    if loss_only_schedule not in LOSS_ONLY_SCHEDULES:
        raise ValueError(
            f"loss_only_schedule: expected one of {LOSS_ONLY_SCHEDULES}, got {loss_only_schedule!r}"
        )
    if loss_only_schedule == "stats_epilogue" and backend != "triton":
        raise ValueError(
            f"loss_only_schedule: 'stats_epilogue' needs backend 'triton', not {backend!r}"
        )
    check_softcap(softcap)
    budget = budget or default_budget(hidden.device)
    grads = wants_grad(hidden, weight, need_grad)
    if not any(grads):
        loss_args = (targets, ce_weight, kl_pairs, kl_weight)
        run = (backend, budget, tiles, loss_only_schedule, gemm_tiles, softcap)
        return loss_only(hidden, weight, loss_args, run, ce_only_rows)
    run = (backend, grads, budget, tiles, softcap)
    loss, ce, kl = FusedReflectionLoss.apply(
        hidden, weight, targets, ce_weight, kl_pairs, kl_weight, run, ce_only_rows
    )
    return loss, {"ce": ce, "kl": kl}


def check_softcap(softcap) -> None:
    """A soft cap is None or a finite number > 0 (c tanh(z / c) needs c > 0)."""
    if softcap is None:
        return
    if isinstance(softcap, bool) or not isinstance(softcap, int | float):
        raise ValueError(f"softcap: expected None or a number > 0, got {softcap!r}")
    if not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"softcap: expected a finite number > 0, got {softcap!r}")


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
    softcap: float | None = None,
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
    buffer: tens of MiB of workspace instead of about 0.5 GiB). softcap: None (default), or
    c > 0: the logits are c tanh(W h / c) (Gemma 2's final_logit_softcapping), in the CE, the
    KL and their gradients (d z times 1 - tanh^2); off, the kernels are the ones without it.
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
        loss_only_schedule=loss_only_schedule, softcap=softcap,
    )  # fmt: skip


__all__ = ["IGNORE_INDEX", "LossPlan", "fused_linear_reflection_loss"]
