"""FLOP formulas for ``torch.utils.flop_counter`` where torch has none for an attention we run,
nor for the grouped GEMM of a mixture of experts' routed experts (``_grouped_mm``: transformers'
default experts implementation).

torch 2.13 counts SDPA's CUDA kernels but not its CPU flash kernel
(``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward), which our varlen
attention's ``sdpa`` backend calls once per segment on a CPU, nor our ``torch.library`` ops
(``reflectioncoder::varlen_attention`` and its backward). Without these a ``FlopCounterMode``
around a CPU step saw no attention at all, 11% short of the step's FLOPs at test sizes. The
counts are those of SDPA's math backend, which torch's counter already sees as matmuls, so a
CPU count does not depend on which SDPA kernel ran: the whole L x L square, as
reflectioncoder.train.flops counts it (torchtitan's 12 x L x H x Dh x sum L^2), 2 GEMMs forward
and 4 backward. (torch's formula for the CUDA flash kernels counts 5 backward, the scores
recomputed inside the kernel.) Our op's backward adds the forward again where it reruns it.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import (
    flop_registry,
    register_flop_formula,
    sdpa_flop_count,
)

aten = torch.ops.aten


def _register(targets, formula, get_raw: bool = False) -> None:
    """``formula`` for each target torch does not count yet (a later torch may)."""
    missing = [t for t in targets if t not in flop_registry]
    if missing:
        register_flop_formula(missing, get_raw=get_raw)(formula)


def _cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(grad_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return 2 * sdpa_flop_count(query_shape, key_shape, value_shape)


def _square(q: torch.Tensor, cu_seqlens: torch.Tensor) -> int:
    """Hq x Dh x sum L^2 of a packed (T, Hq, Dh) batch (reads cu_seqlens: counting only)."""
    lens = cu_seqlens.diff().tolist()
    return q.shape[1] * q.shape[2] * sum(n * n for n in lens)


def _varlen_forward(q, k, v, cu_seqlens, *args, out_val=None, **kwargs) -> int:
    return 4 * _square(q, cu_seqlens)


def _varlen_backward(
    grad,
    q,
    k,
    v,
    out,
    lse,
    rng_state,
    cu_seqlens,
    max_seqlen,
    causal,
    scale,
    backend,
    *,
    out_val=None,
) -> int:
    from .varlen_attention import resolve_backend
    from .varlen_attention_op import kernel_backward

    rerun = not kernel_backward(resolve_backend(q, backend), q.shape[-1])
    return (8 + 4 * rerun) * _square(q, cu_seqlens)


def _grouped_mm(a, b, *args, out_val=None, **kwargs) -> int:
    """2 x rows x K x N: each row of ``a`` meets one group's (K, N) matrix (the forward's
    (S, K) x (E, K, N), and the weight gradients' (K, S) x (S, N) -> (E, K, N) alike)."""
    rows, inner = (a.shape[0], a.shape[1]) if b.dim() == 3 else (a.shape[1], a.shape[0])
    return 2 * rows * inner * b.shape[-1]


def register_attention_formulas() -> None:
    """Count the CPU flash kernel, our varlen ops and the grouped GEMM (idempotent)."""
    if hasattr(aten, "_grouped_mm"):
        _register([aten._grouped_mm], _grouped_mm, get_raw=True)
    _register([aten._scaled_dot_product_flash_attention_for_cpu], _cpu_flash)
    _register([aten._scaled_dot_product_flash_attention_for_cpu_backward], _cpu_flash_backward)
    ops = torch.ops.reflectioncoder
    if hasattr(ops, "varlen_attention"):
        _register([ops.varlen_attention], _varlen_forward, get_raw=True)
        _register([ops.varlen_attention_backward], _varlen_backward, get_raw=True)
