"""The fused loss's slot sums: d h of each row, its slots' d h rows summed in a fixed order
(no atomics: bitwise reproducible gradients), times the upstream gradient."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fused_loss_rows import TILES, RowTiles


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


def slot_sum_spec(name: str, dtype: torch.dtype, d: int) -> dict:
    """The slot-sum kernel's production launch in ``dtype`` at hidden size ``d``, for
    fused_loss.COMPILE_SPECS."""
    z = torch.empty(16, dtype=dtype)
    i64 = torch.empty(16, dtype=torch.int64)
    f32 = torch.empty(16, dtype=torch.float32)
    args = dict(DHS_ptr=z, Order_ptr=i64, Start_ptr=i64, G_ptr=f32, DH_ptr=z, D=d)
    args |= dict(DHS_stride=d, DH_stride=d, BLOCK_D=TILES.block_d)
    return {
        "name": f"sum_slots/{name}",
        "kernel": _sum_slots_kernel,
        "args": args,
        "num_warps": TILES.num_warps,
    }
