"""Float64 reference of packed causal attention: each segment on its own, written out."""

from __future__ import annotations

import math

import torch


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seqlens: list[int],
    causal: bool = True,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """q (T, Hq, Dh), k/v (T, Hkv, Dh) -> (T, Hq, Dh) float64, segment by segment."""
    q, k, v = q.double(), k.double(), v.double()
    hq, hkv, dh = q.shape[1], k.shape[1], q.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(dh)
    out = torch.zeros_like(q)
    start = 0
    for n in seqlens:
        for h in range(hq):
            g = h // (hq // hkv)  # the kv head this query head shares (GQA)
            qs = q[start : start + n, h]
            ks = k[start : start + n, g]
            vs = v[start : start + n, g]
            scores = qs @ ks.T * scale
            if causal:
                future = torch.ones(n, n, dtype=torch.bool).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            out[start : start + n, h] = torch.softmax(scores, dim=-1) @ vs
        start += n
    return out
