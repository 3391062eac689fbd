"""Causal attention over packed variable-length sequences (one canonical entry point).

Packed layout (flash-attention's varlen convention): the S sequences of a micro-batch lie end to
end along the token axis, ``cu_seqlens`` (S + 1,) int32 holds their boundaries, and a token
attends only to tokens of its own sequence (causally, by index inside the sequence; RoPE
positions were applied before and may have gaps).

  out[t] = sum_{u in seg(t), u <= t} softmax_u(scale * q[t] . k[u]) v[u]

Backends, chosen from the device:
- CUDA with flash-attn installed: ``flash_attn_varlen_func`` (GQA native, no padding).
- otherwise (CPU; CUDA without flash-attn): one ``scaled_dot_product_attention`` call per
  segment, which takes PyTorch's flash kernels (CPU and CUDA; O(L) memory) and never builds a
  T x T mask.
  Segment lengths come from a host list (``seqlens``), so the loop issues no device sync.

Cost: 4 * Hq * Dh * sum_s L_s^2 / 2 FLOPs forward (causal), twice that backward.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

# flash-attn is an optional GPU extra (setup.py `gpu`); probe without importing it.
_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def varlen_backend(device: torch.device) -> str:
    """The backend ``varlen_attention`` uses on ``device``: "flash_attn" or "sdpa"."""
    return "flash_attn" if device.type == "cuda" and _HAS_FLASH_ATTN else "sdpa"


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    seqlens: list[int] | None,
) -> None:
    if q.dim() != 3:
        raise ValueError(f"q: expected (T, Hq, Dh), got shape {tuple(q.shape)}")
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(
            f"k, v: expected equal shapes (T, Hkv, Dh), got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(
            f"k: expected (T={q.shape[0]}, Hkv, Dh={q.shape[2]}) to match q, got {tuple(k.shape)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q, k: Hq={q.shape[1]} must be a multiple of Hkv={k.shape[1]} (GQA)")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise ValueError(
            f"cu_seqlens: expected (S + 1,) int32 with S >= 1, got shape "
            f"{tuple(cu_seqlens.shape)} dtype {cu_seqlens.dtype}"
        )
    if seqlens is not None:
        if len(seqlens) != cu_seqlens.numel() - 1:
            raise ValueError(
                f"seqlens: expected {cu_seqlens.numel() - 1} lengths (S), got {len(seqlens)}"
            )
        if any(n < 0 for n in seqlens) or sum(seqlens) != q.shape[0]:
            raise ValueError(
                f"seqlens: lengths must be >= 0 and sum to T={q.shape[0]}, got sum {sum(seqlens)}"
            )


def _sdpa_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seqlens: list[int],
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Per-segment SDPA; q (T, Hq, Dh), k/v (T, Hkv, Dh) -> (T, Hq, Dh)."""
    gqa = q.shape[1] != k.shape[1]
    outs = []
    start = 0
    for n in seqlens:
        if n == 0:  # an empty segment contributes no rows
            continue
        end = start + n
        # (L, H, Dh) -> (1, H, L, Dh): SDPA's 4-D layout. It must be 4-D: with 3-D inputs the
        # CPU dispatcher takes the math path, which stores the (H, L, L) probabilities.
        o = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1).unsqueeze(0),
            k[start:end].transpose(0, 1).unsqueeze(0),
            v[start:end].transpose(0, 1).unsqueeze(0),
            is_causal=causal,
            scale=scale,
            enable_gqa=gqa,
        )
        outs.append(o[0].transpose(0, 1))
        start = end
    if not outs:
        return q.new_empty(q.shape)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    seqlens: list[int] | None = None,
) -> torch.Tensor:
    """Attention of each packed sequence over itself.

    Args:
        q: (T, Hq, Dh) queries of all sequences, end to end.
        k, v: (T, Hkv, Dh) keys and values; Hq a multiple of Hkv (GQA).
        cu_seqlens: (S + 1,) int32 on q's device: sequence boundaries, 0 first, T last.
        max_seqlen: the longest sequence (flash-attn needs it as a host int).
        causal: mask future tokens inside each sequence.
        softmax_scale: defaults to 1 / sqrt(Dh).
        seqlens: optional host list of the S lengths; the PyTorch path needs them on the host,
            and reading them from ``cu_seqlens`` otherwise costs one device sync on CUDA.

    Returns:
        (T, Hq, Dh) attention output, q's dtype.
    """
    _check_inputs(q, k, v, cu_seqlens, seqlens)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if varlen_backend(q.device) == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(
            q,
            k,
            v,
            cu_seqlens_q=cu_seqlens,
            cu_seqlens_k=cu_seqlens,
            max_seqlen_q=int(max_seqlen),
            max_seqlen_k=int(max_seqlen),
            softmax_scale=scale,
            causal=causal,
        )
    if seqlens is None:
        # Host copy of the lengths: free on the CPU; on CUDA one sync, avoided by passing seqlens.
        seqlens = torch.diff(cu_seqlens).tolist()
        if sum(seqlens) != q.shape[0] or any(n < 0 for n in seqlens):
            raise ValueError(f"cu_seqlens: must rise from 0 to T={q.shape[0]}, got {seqlens}")
    return _sdpa_varlen(q, k, v, seqlens, causal, scale)
