"""The fused loss's row maths in PyTorch (the CPU production path, second opinion on GPU): a
``RowOp`` for ``fused_loss_schedule.run_chunks``, and the per-row sums of the slots' d h. The
maths: fused_loss_schedule.py's docstring, docs/kernel-math.md; with a soft cap c the logits are
c tanh(z / c) and d z carries tanh's derivative 1 - tanh^2."""

from __future__ import annotations

import torch

from .fused_loss_schedule import accum_dtype

# Rows per softmax sub-block of the torch row maths: 32 x 32K fp32 = 4 MiB, cache-sized.
SUB_ROWS = 32


def _ce_rows(z, targets, ce_w, ce_out, write_dz) -> None:
    """CE of fp32 rows z (r, V) into ce_out; with ``write_dz`` z becomes c (p - onehot(y))."""
    y = targets.clamp(min=0)[:, None]
    torch.log_softmax(z, dim=-1, out=z)  # one fused pass; row-wise, so in place is safe
    ce_out.copy_(-ce_w * z.gather(1, y).squeeze(1))
    if write_dz:
        z.exp_().mul_(ce_w[:, None]).scatter_add_(1, y, -ce_w[:, None])


def _pair_rows(zt, zs, tgt_t, tgt_s, cw_t, cw_s, kw, ce_t, ce_s, kl_out, write_dz) -> None:
    """CE and KL of r pairs, fp32 logits zt, zs (r, V); with ``write_dz`` they become d z:
    teachers c_t (p_t - onehot), students (c_s + k) p_s - k p_t - c_s onehot."""
    y_t = tgt_t.clamp(min=0)[:, None]
    y_s = tgt_s.clamp(min=0)[:, None]
    torch.log_softmax(zt, dim=-1, out=zt)
    torch.log_softmax(zs, dim=-1, out=zs)
    ce_t.copy_(-cw_t * zt.gather(1, y_t).squeeze(1))
    ce_s.copy_(-cw_s * zs.gather(1, y_s).squeeze(1))
    p_t = zt.exp()
    kl_out.copy_(kw * torch.linalg.vecdot(p_t, zt - zs))  # sum_v p_t (log p_t - log p_s)
    if write_dz:
        zs.exp_().mul_((cw_s + kw)[:, None]).addcmul_(p_t, -kw[:, None])
        zs.scatter_add_(1, y_s, -cw_s[:, None])
        torch.mul(p_t, cw_t[:, None], out=zt).scatter_add_(1, y_t, -cw_t[:, None])


def _softcapped(zf: torch.Tensor, cap: float | None) -> torch.Tensor | None:
    """zf -> c tanh(zf / c) in place (the logits of a soft-capped head); returns the tanh, from
    which d z takes the derivative 1 - tanh^2 (None when ``cap`` is None: nothing done)."""
    if cap is None:
        return None
    t = zf.div(cap).tanh_()
    torch.mul(t, cap, out=zf)
    return t


def _through_cap(dz: torch.Tensor, t: torch.Tensor | None) -> None:
    """d z of the capped logits -> d z of the GEMM's: times 1 - tanh^2 (consumes ``t``)."""
    if t is not None:
        dz.mul_(t.square_().neg_().add_(1.0))


def torch_row_op(z, targets, ce_w, kl_w, ce_out, kl_out, write_dz, softcap=None) -> None:
    """The row maths in PyTorch, SUB_ROWS rows at a time in fp32 (fp64 for fp64 logits;
    cache-sized temporaries); ``softcap``: the logits are c tanh(z / c) (None: z)."""
    r = z.shape[0]
    acc = accum_dtype(z.dtype)
    ce_w = ce_w.to(acc)  # scatter_add_ takes its source in z's dtype
    if kl_w is None:
        for a in range(0, r, SUB_ROWS):
            zf = z[a : a + SUB_ROWS].to(acc)
            b = a + zf.shape[0]
            t = _softcapped(zf, softcap)
            _ce_rows(zf, targets[a:b], ce_w[a:b], ce_out[a:b], write_dz)
            if write_dz:
                _through_cap(zf, t)
                z[a:b].copy_(zf)
        return
    half = r // 2
    step = max(1, SUB_ROWS // 2)
    kl_w = kl_w.to(acc)
    for a in range(0, half, step):
        b = min(half, a + step)
        t, s = slice(a, b), slice(half + a, half + b)
        zt, zs = z[t].to(acc), z[s].to(acc)
        caps = _softcapped(zt, softcap), _softcapped(zs, softcap)
        _pair_rows(
            zt, zs, targets[t], targets[s], ce_w[t], ce_w[s], kl_w[a:b],
            ce_out[t], ce_out[s], kl_out[a:b], write_dz,
        )  # fmt: skip
        if write_dz:
            _through_cap(zt, caps[0])
            _through_cap(zs, caps[1])
            z[t].copy_(zt)
            z[s].copy_(zs)


def torch_sum_slots(dh_slots: torch.Tensor, rows: torch.Tensor, n: int, g: torch.Tensor):
    """d h (N, D) in the slots' dtype: the slots of each row summed in fp32 (fp64 for fp64
    slots) in slot order, times g. A segmented sum over the slots sorted by row: each row's sum
    runs in one place in a fixed order, with no atomics on CUDA (index_add_ there adds in an
    order that varies from run to run) and no host sync (the segments' count is N)."""
    acc = accum_dtype(dh_slots.dtype)
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=n)
    by_row = dh_slots.index_select(0, order).to(acc)
    out = torch.segment_reduce(by_row, "sum", lengths=counts, axis=0, unsafe=True, initial=0)
    return out.mul_(g).to(dh_slots.dtype)
