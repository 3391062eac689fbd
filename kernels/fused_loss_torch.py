"""Fused linear reflection loss in chunked plain PyTorch: the CPU production path.

Maths (KERNEL-MATH.md). Rows r have hidden h_r (D), logits z_r = W h_r (V), p_r = softmax(z_r):
  loss = sum_r c_r (lse_r - z_r[y_r]) + sum_j k_j sum_v p_tv (log p_tv - log p_sv),  j = (t, s)
  d loss / d z_r = c_r (p_r - onehot(y_r)) + sum_{j: s_j = r} k_j (p_r - p_t(j))
(the teacher of a pair is detached from the KL: it keeps only its own CE gradient).

Schedule. Only the rows that carry a loss are touched: pairs are processed in chunks whose rows
are [teachers of the chunk, students of the chunk], so both logit blocks of a pair are in hand
at once and z_t, z_s are computed once; rows with CE and no pair follow in plain chunks. A row in
several pairs owns its CE in exactly one slot (the first one), so it is counted once. Each chunk
computes its (rows, V) logits exactly (no online statistics needed: the chunk holds whole rows),
its loss, and, when a gradient is wanted, d z (in place of the logits) and at once d h (= d z W)
and d W (+= d z^T h): 3 GEMMs in all, as many as the unfused forward + backward, and backward
only scales the stored gradients by the upstream gradient. Memory beyond inputs and gradients:
one (rows, V) fp32 buffer, rows = CHUNK_BYTES / (4 V), independent of N, plus cache-sized
sub-block temporaries.
FLOPs: 2 R D V (logits) + 2 R D V (d h) + 2 R D V (d W), R = rows with CE + 2 * pairs.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
# The chunk's (rows, V) fp32 logits take about this much; they are the only large buffer (the
# softmax work runs SUB_ROWS rows at a time). 64 MiB gives 512-row GEMMs at V = 32K, so W is
# streamed (and the fp32 dW read-modified-written) N / 512 times, and keeps the extra memory
# under 1/8 of the full-logit recipe at N = 4096.
CHUNK_BYTES = 64 * 2**20
MAX_CHUNK_ROWS = 2048
# Rows per softmax sub-block: 32 x 32K fp32 = 4 MiB, cache-sized.
SUB_ROWS = 32


def chunk_rows(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that the (rows, V) fp32 logits take about ``chunk_bytes`` (even, >= 2)."""
    rows = max(2, min(MAX_CHUNK_ROWS, chunk_bytes // (4 * max(vocab, 1))))
    return rows - rows % 2


def check_loss_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    check_indices: bool,
) -> None:
    """Raise ValueError naming the first bad argument. ``check_indices`` reads index ranges back
    to the host (a sync on CUDA), so it is the caller's choice there."""
    if hidden.dim() != 2 or not hidden.is_floating_point():
        raise ValueError(
            f"hidden: expected a (N, D) float tensor, got {tuple(hidden.shape)} {hidden.dtype}"
        )
    n, d = hidden.shape
    if weight.dim() != 2 or weight.shape[1] != d:
        raise ValueError(f"weight: expected (V, D={d}), got {tuple(weight.shape)}")
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
    for name, t in (
        ("weight", weight),
        ("targets", targets),
        ("ce_weight", ce_weight),
        ("kl_pairs", kl_pairs),
        ("kl_weight", kl_weight),
    ):
        if t.device != hidden.device:
            raise ValueError(f"{name}: on {t.device}, hidden on {hidden.device}")
    if not check_indices:
        return
    v = weight.shape[0]
    # Host syncs on CUDA (one bool each); only reached when the caller asks for the check there.
    bad_target = ((targets != IGNORE_INDEX) & ((targets < 0) | (targets >= v))).any()
    if bool(bad_target):
        raise ValueError(f"targets: ids must lie in [0, V={v}) or be {IGNORE_INDEX}")
    if p > 0 and bool(((kl_pairs < 0) | (kl_pairs >= n)).any()):
        raise ValueError(f"kl_pairs: row indices must lie in [0, N={n})")


def pair_slot_owner(kl_pairs: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(N,) int64: the first pair slot (2 j + side, side 0 teacher, 1 student) holding each row,
    or 2 P for rows in no pair. The owner slot carries the row's CE, so it is counted once."""
    p = kl_pairs.shape[0]
    owner = torch.full((n_rows,), 2 * p, dtype=torch.int64, device=kl_pairs.device)
    slots = torch.arange(2 * p, dtype=torch.int64, device=kl_pairs.device)
    return owner.scatter_reduce_(0, kl_pairs.reshape(-1), slots, reduce="amin")


def _ce_rows(
    z: torch.Tensor, targets: torch.Tensor, ce_w: torch.Tensor, want_grad: bool
) -> torch.Tensor:
    """CE sum of rows z (r, V) fp32; with ``want_grad`` z becomes c (p - onehot(y)) in place."""
    cw = torch.where(targets != IGNORE_INDEX, ce_w, 0.0)
    y = targets.clamp(min=0)[:, None]
    torch.log_softmax(z, dim=-1, out=z)  # one fused pass; row-wise, so in place is safe
    ce = -(cw * z.gather(1, y).squeeze(1)).sum()
    if want_grad:
        z.exp_().mul_(cw[:, None]).scatter_add_(1, y, -cw[:, None])
    return ce


def _pair_rows(
    zt: torch.Tensor,
    zs: torch.Tensor,
    tgt_t: torch.Tensor,
    tgt_s: torch.Tensor,
    cw_t: torch.Tensor,
    cw_s: torch.Tensor,
    kw: torch.Tensor,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE sum, KL sum) of r pairs, logits zt, zs (r, V) fp32; with ``want_grad`` they become
    dz in place: teachers c_t (p_t - onehot), students (c_s + k) p_s - k p_t - c_s onehot."""
    cw_t = torch.where(tgt_t != IGNORE_INDEX, cw_t, 0.0)
    cw_s = torch.where(tgt_s != IGNORE_INDEX, cw_s, 0.0)
    y_t = tgt_t.clamp(min=0)[:, None]
    y_s = tgt_s.clamp(min=0)[:, None]
    torch.log_softmax(zt, dim=-1, out=zt)
    torch.log_softmax(zs, dim=-1, out=zs)
    ce = -(cw_t * zt.gather(1, y_t).squeeze(1)).sum() - (cw_s * zs.gather(1, y_s).squeeze(1)).sum()
    p_t = zt.exp()
    kl = (kw * torch.linalg.vecdot(p_t, zt - zs)).sum()  # sum_v p_t (log p_t - log p_s)
    if want_grad:
        zs.exp_().mul_((cw_s + kw)[:, None]).addcmul_(p_t, -kw[:, None])
        zs.scatter_add_(1, y_s, -cw_s[:, None])
        torch.mul(p_t, cw_t[:, None], out=zt).scatter_add_(1, y_t, -cw_t[:, None])
    return ce, kl


def _chunk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    ce_w: torch.Tensor,
    kl_w: torch.Tensor | None,
    grad_h: torch.Tensor | None,
    grad_w: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (and gradients, accumulated in place) of one chunk of rows.

    rows (R,) int64 into hidden; targets (R,) with IGNORE where this slot carries no CE; ce_w (R,)
    fp32; kl_w (R/2,) fp32 or None: then rows = [teachers (R/2), students (R/2)] of R/2 pairs.
    The GEMMs take the whole chunk; the softmax work runs SUB_ROWS rows at a time so that its
    ~15 passes over the data stay in cache. Returns (ce sum, kl sum), 0-dim fp32.
    """
    h = hidden.index_select(0, rows)  # (R, D)
    z = (h @ weight.T).float()  # (R, V): the chunk's logits, fp32 statistics from here on
    want_grad = grad_h is not None or grad_w is not None
    ce = z.new_zeros(())
    kl = z.new_zeros(())
    r = rows.shape[0]
    if kl_w is None:
        for a in range(0, r, SUB_ROWS):
            b = min(r, a + SUB_ROWS)
            ce += _ce_rows(z[a:b], targets[a:b], ce_w[a:b], want_grad)
    else:
        half = r // 2
        step = max(1, SUB_ROWS // 2)
        for a in range(0, half, step):
            b = min(half, a + step)
            t, s = slice(a, b), slice(half + a, half + b)
            c, k = _pair_rows(
                z[t], z[s], targets[t], targets[s], ce_w[t], ce_w[s], kl_w[a:b], want_grad
            )
            ce += c
            kl += k
    if not want_grad:
        return ce, kl
    dz = z.to(weight.dtype)  # z now holds d loss / d z
    if grad_h is not None:
        grad_h.index_add_(0, rows, (dz @ weight).float())
    if grad_w is not None:
        if grad_w.dtype == dz.dtype:
            grad_w.addmm_(dz.T, h)
        else:  # bf16 / fp16: the GEMM runs in the input dtype, accumulation in fp32
            grad_w.add_(dz.T @ h)
    return ce, kl


def torch_reflection_loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    rows_per_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(ce sum, kl sum, d loss/d hidden (N, D) fp32 or None, d loss/d weight (V, D) fp32 or None)
    for an upstream gradient of 1. Shapes as in ``fused_linear_reflection_loss``."""
    n, d = hidden.shape
    v = weight.shape[0]
    p = kl_pairs.shape[0]
    dev = hidden.device
    rows_per_chunk = rows_per_chunk or chunk_rows(v)
    grad_h = torch.zeros(n, d, dtype=torch.float32, device=dev) if need_grad_hidden else None
    grad_w = torch.zeros(v, d, dtype=torch.float32, device=dev) if need_grad_weight else None
    ce = torch.zeros((), dtype=torch.float32, device=dev)
    kl = torch.zeros((), dtype=torch.float32, device=dev)
    owner = pair_slot_owner(kl_pairs, n)
    teacher, student = kl_pairs[:, 0], kl_pairs[:, 1]
    half = max(1, rows_per_chunk // 2)
    for a in range(0, p, half):
        b = min(p, a + half)
        rows = torch.cat([teacher[a:b], student[a:b]])
        slots = torch.arange(a, b, device=dev) * 2
        mine = owner[rows] == torch.cat([slots, slots + 1])
        tgt = torch.where(mine, targets[rows], IGNORE_INDEX)
        c, k = _chunk(hidden, weight, rows, tgt, ce_weight[rows], kl_weight[a:b], grad_h, grad_w)
        ce += c
        kl += k
    # Rows with CE and no pair. nonzero() sizes the work from the data: free on CPU, one sync
    # on CUDA (this path is only the second opinion there; the Triton path has none).
    solo = ((targets != IGNORE_INDEX) & (ce_weight != 0) & (owner == 2 * p)).nonzero()
    solo = solo.squeeze(1)
    for a in range(0, solo.shape[0], rows_per_chunk):
        rows = solo[a : a + rows_per_chunk]
        c, _ = _chunk(hidden, weight, rows, targets[rows], ce_weight[rows], None, grad_h, grad_w)
        ce += c
    return ce, kl, grad_h, grad_w


class TorchFusedReflectionLoss(torch.autograd.Function):
    """Loss and gradients in one chunked forward; backward scales them by the upstream grad."""

    @staticmethod
    def forward(
        ctx, hidden, weight, targets, ce_weight, kl_pairs, kl_weight, grads, rows_per_chunk
    ):
        ce, kl, grad_h, grad_w = torch_reflection_loss_and_grads(
            hidden, weight, targets, ce_weight, kl_pairs, kl_weight, *grads, rows_per_chunk
        )
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.used = False
        ctx.mark_non_differentiable(ce, kl)
        return ce + kl, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        if ctx.used:
            raise RuntimeError("fused_linear_reflection_loss: backward may run only once")
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        dh = dw = None
        # In place (the stored gradients are used once): no second (V, D) fp32 buffer.
        if grad_h is not None:
            dh = grad_h.mul_(grad_loss).to(ctx.dtypes[0])
        if grad_w is not None:
            dw = grad_w.mul_(grad_loss).to(ctx.dtypes[1])
        return dh, dw, None, None, None, None, None, None


def torch_linear_reflection_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    rows_per_chunk: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PyTorch backend of ``fused_linear_reflection_loss`` (inputs already checked).

    hidden: (N, D); weight: (V, D); targets: (N,) int64; ce_weight: (N,) fp32;
    kl_pairs: (P, 2) int64; kl_weight: (P,) fp32 -> (loss 0-dim fp32, {"ce", "kl"}).
    """
    grad_on = torch.is_grad_enabled()
    grads = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad)
    loss, ce, kl = TorchFusedReflectionLoss.apply(
        hidden, weight, targets, ce_weight, kl_pairs, kl_weight, grads, rows_per_chunk
    )
    return loss, {"ce": ce, "kl": kl}
